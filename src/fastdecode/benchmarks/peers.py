"""fastdecode against the engines a user would pick instead, side by side:
llama.cpp (llama-cpp-python), CTranslate2, onnxruntime-genai and
transformers, at every weight format each has.

Workload: the bench checkpoints of ``decode.py`` (``gpt2-124m``,
``llama-125m``, random weights), batch 1, a 32-token prompt, 128 new tokens,
greedy, eos ignored (each engine's own switch: fastdecode ``ignore_eos``,
llama.cpp's ``generate()`` never stops by itself, CTranslate2
``min_length = max_length`` and ``end_token=[]``, onnxruntime-genai
``min_length = max_length``, transformers ``min_new_tokens`` and no eos).
Every contender reports the ids it made; a run that made a different
number of tokens than asked is an error, not a row.

Threads: each engine's own setting, 1 and 2: ``fd.set_num_threads``,
llama.cpp ``n_threads``/``n_threads_batch``, CTranslate2 ``intra_threads``
(``inter_threads=1``), onnxruntime-genai's session options
``intra_op_num_threads`` (``inter_op_num_threads=1``) set on ``og.Config``,
transformers ``torch.set_num_threads``.

Method, the same for every contender: in a process of its own (a fresh one
per contender and round; the order rotates from round to round), the
engine loads the model, runs one warm-up generation of 2 tokens, then
times generate(128) and generate(1) after the same prompt (wall clock,
``time.perf_counter``, around the engine's own Python call); the decode
rate is ``127 / (T(128) - T(1))`` tokens/s, so prompt processing, the first
token and the process start do not count. Every run prefills its prompt
(fastdecode ``prefix_cache_mb=0``; llama.cpp ``reset()`` before each run,
else ``generate()`` reuses a shared prefix's KV cache). llama.cpp's own
timers of the 128-token run (``llama_perf_context``: ``t_eval_ms /
n_eval``) are kept in the JSON beside the wall clock, to show what the
Python binding adds. The paired ratio of a round is fastdecode's tokens/s
over the peer's in that round; the table gives each round's ratio and
their median.

Time to first token: fastdecode and llama.cpp on the same format, the
wall time of generate(1) after a 512-token prompt (the second of two such
runs in the same process), i.e. the prompt's processing plus one token.

Files: GGUF by fastdecode's own writer (``Model.save(path, weights=...)``,
as ``fastdecode convert``), CTranslate2 by its ``TransformersConverter``,
onnxruntime-genai by its model builder (Llama only: the builder has no
GPT-2); see peers_files.py. llama.cpp runs at its defaults otherwise (f16
KV cache, its own batch sizes).

    python bench/peers.py [--models gpt2-124m,llama-125m] [--threads 1,2] [--rounds 3]
                          [--peer-python ENGINE=PYTHON ...] [--json PATH] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from . import harness, peers_files
from .peers_report import _short, comparisons, describe, engines, table, time_to_first_token, ttft_table  # noqa: F401
from .decode import MODELS, checkpoint, default_cache_dir

PROMPT_TOKENS, NEW_TOKENS, LONG_PROMPT = 32, 128, 512
QUICK_NEW_TOKENS, QUICK_LONG_PROMPT = 8, 48
ENGINES = {  # engine: (module, distribution to install)
    "fastdecode": ("fastdecode", "fastdecode"),
    "llama.cpp": ("llama_cpp", "llama-cpp-python"),
    "ctranslate2": ("ctranslate2", "ctranslate2"),
    "onnxruntime-genai": ("onnxruntime_genai", "onnxruntime-genai"),
    "transformers": ("transformers", "transformers"),
}
# (fastdecode's format, its peers as (engine, format)) — one line of the table each
GROUPS = (
    ("float32", (("llama.cpp", "f32"), ("ctranslate2", "float32"), ("transformers", "float32"))),
    ("bf16", (("llama.cpp", "f16"), ("llama.cpp", "bf16"))),
    ("q8_0", (("llama.cpp", "q8_0"), ("ctranslate2", "int8"), ("onnxruntime-genai", "int8"))),
    ("q4_0", (("llama.cpp", "q4_0"), ("onnxruntime-genai", "int4"))),
    ("q4_k_m", (("llama.cpp", "q4_k_m"), ("onnxruntime-genai", "int4"))),
)
ORT_MODEL_TYPES = ("llama", "mistral", "qwen2")  # what this benchmark asks the builder for (it has no gpt2)


def select(formats=None, engines=None, groups=GROUPS) -> tuple:
    """GROUPS restricted to fastdecode `formats` and peer `engines` (None: all). ValueError on an unknown name."""
    known_formats, known_engines = [g[0] for g in groups], [e for e in ENGINES if e != "fastdecode"]
    for given, known, what in ((formats, known_formats, "format"), (engines, known_engines, "engine")):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple((fmt, tuple(p for p in peers if engines is None or p[0] in engines))
                 for fmt, peers in groups if formats is None or fmt in formats)


def contenders(groups=GROUPS) -> list[tuple[str, str]]:
    out = []
    for fmt, peers in groups:
        for c in (("fastdecode", fmt), *peers):
            if c not in out:
                out.append(c)
    return out


def label(c) -> str:
    return f"{c[0]} {'Q4_K_M' if c == ('llama.cpp', 'q4_k_m') else c[1]}"


# ---------------------------------------------------------------------------
# The machine and the engines' interpreters
# ---------------------------------------------------------------------------

def machine() -> dict:
    """harness.machine() plus the SIMD flags and L3 size of lscpu's view of the CPU."""
    out = harness.machine()
    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pass
    out["simd_flags"] = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]
    out["l3_bytes"] = l3_bytes()
    for _, (module, dist) in ENGINES.items():
        out.setdefault(dist, harness._version(dist))
    return out


def l3_bytes() -> int | None:
    """Total L3 of the machine (sum over distinct L3 caches), or None."""
    seen, total = set(), 0
    root = "/sys/devices/system/cpu"
    for cpu in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, cpu, "cache", "index3")
        try:
            with open(os.path.join(d, "shared_cpu_list")) as f:
                shared = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if shared not in seen:
            seen.add(shared)
            total += int(size[:-1]) * {"K": 1 << 10, "M": 1 << 20}[size[-1]] if size[-1] in "KM" else int(size)
    return total or None


def peer_pythons(specs=()) -> dict:
    """{engine: interpreter}: --peer-python ENGINE=PATH, else $FASTDECODE_PEER_PYTHON_<ENGINE>
    (e.g. FASTDECODE_PEER_PYTHON_LLAMA_CPP), else $FASTDECODE_PEER_PYTHON, else this interpreter."""
    out = {}
    for e in ENGINES:
        env = "FASTDECODE_PEER_PYTHON_" + "".join(ch if ch.isalnum() else "_" for ch in e.upper())
        out[e] = os.environ.get(env) or os.environ.get("FASTDECODE_PEER_PYTHON") or sys.executable
    out["fastdecode"] = sys.executable  # the fastdecode being measured is this one
    for spec in specs:
        engine, _, path = spec.partition("=")
        if engine not in ENGINES or not path:
            raise ValueError(f"--peer-python takes ENGINE=PYTHON with ENGINE one of {', '.join(ENGINES)}; got {spec!r}")
        out[engine] = path
    return out


_INFO = """import importlib.metadata as md, importlib.util, json, sys
module, dist = sys.argv[1:3]
if importlib.util.find_spec(module) is None:
    sys.exit(3)
info = {"version": md.version(dist), "python": sys.executable}
if module == "llama_cpp":  # the SIMD llama.cpp was built for (its build decides its kernels)
    import llama_cpp
    info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
print(json.dumps(info))
"""


def engine_info(engine: str, python: str) -> dict | str:
    """The engine's version (and llama.cpp's build flags) as `python` sees it, or
    'not installed: <distribution>' when `python` cannot import it."""
    module, dist = ENGINES[engine]
    try:
        proc = subprocess.run([python, "-c", _INFO, module, dist], capture_output=True, text=True)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return f"not installed: {dist}" + ("" if python == sys.executable else f" (in {python})")


def missing(engine: str, python: str) -> str | None:
    """'not installed: <distribution>' when `python` cannot import the engine, else None."""
    info = engine_info(engine, python)
    return info if isinstance(info, str) else None


# ---------------------------------------------------------------------------
# Files, workers, rounds
# ---------------------------------------------------------------------------

def prepare(c, hf_dir: str, staged, cache: str, pythons: dict, config: dict):
    """(path the contender loads, how it was made) or raises RuntimeError/ValueError."""
    engine, fmt = c
    if engine == "fastdecode":
        return hf_dir, f"fastdecode.load(weights={None if fmt == 'float32' else fmt!r}) of the checkpoint"
    if engine == "transformers":
        return hf_dir, "the checkpoint, float32"
    if engine == "llama.cpp":
        return peers_files.gguf(staged(), fmt, cache), f"GGUF {fmt} written by fastdecode's writer (Model.save)"
    if engine == "ctranslate2":
        return peers_files.ctranslate2(staged(), fmt, cache, pythons[engine]), f"ctranslate2 TransformersConverter {fmt}"
    if config.get("model_type") not in ORT_MODEL_TYPES:
        raise ValueError(f"not supported: onnxruntime-genai's model builder has no {config.get('model_type')}")
    return peers_files.onnxruntime_genai(staged(), fmt, cache, pythons[engine]), f"onnxruntime-genai builder -p {fmt} -e cpu"


def run_worker(python: str, req: dict, timeout: float) -> dict:
    """One contender's timed runs in a fresh process (peers_worker.py); RuntimeError on failure."""
    with open(os.path.join(os.path.dirname(__file__), "peers_worker.py")) as f:
        code = f.read()
    proc = subprocess.run([python, "-c", code, json.dumps(req)], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{req['engine']} {req['format']} worker failed (exit code {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    if len(out["ids"]) != req["new_tokens"] or out["n_one"] != 1:
        raise RuntimeError(f"{req['engine']} {req['format']} made {len(out['ids'])} and {out['n_one']} new tokens, "
                           f"asked for {req['new_tokens']} and 1")
    dt = out["full_s"] - out["one_s"]  # <= 0 only when too few tokens drown in noise (tiny --quick runs)
    out["decode_tokens_per_s"] = (req["new_tokens"] - 1) / dt if dt > 0 else None
    return out


def run(models: dict, thread_counts, rounds: int, new_tokens: int, long_prompt: int, pythons: dict,
        cache_root: str, groups=GROUPS, progress=None, timeout: float = 900.0) -> list[dict]:
    """One row per (model, threads, contender): status, and per round its worker's result."""
    rows = []
    for name, hf_dir in models.items():
        with open(os.path.join(hf_dir, "config.json")) as f:
            config = json.load(f)
        vocab = min(config["vocab_size"], 32000)
        prompt = np.random.default_rng(0).integers(0, vocab, PROMPT_TOKENS).tolist()
        long = np.random.default_rng(1).integers(0, vocab, long_prompt).tolist() if long_prompt else None
        cache = peers_files.cache_for(hf_dir, cache_root, name)
        staged = lambda: peers_files.stage(hf_dir, cache)  # noqa: E731 (made on first need)
        ready = {}
        infos = {e: engine_info(e, pythons[e]) for e in dict.fromkeys(c[0] for c in contenders(groups))}
        for c in contenders(groups):
            why = infos[c[0]] if isinstance(infos[c[0]], str) else None
            try:
                ready[c] = (why, None, None) if why else (None, *prepare(c, hf_dir, staged, cache, pythons, config))
            except (RuntimeError, ValueError, OSError) as exc:
                ready[c] = (str(exc) if str(exc).startswith("not supported") else f"failed: {exc}", None, None)
        for n in thread_counts:
            mine = {c: {"model": name, "threads": n, "contender": label(c), "engine": c[0], "format": c[1],
                        "status": ready[c][0] or "ok", "made_by": ready[c][2], "engine_info": infos[c[0]],
                        "rounds": []}
                    for c in ready}
            live = [c for c in ready if ready[c][0] is None]
            for r in range(rounds):
                for c in live[r % len(live):] + live[:r % len(live)] if live else []:
                    if mine[c]["status"] != "ok":
                        continue
                    ttft = c[0] == "fastdecode" or c[0] == "llama.cpp"
                    req = {"engine": c[0], "format": c[1], "path": ready[c][1], "threads": n, "prompt": prompt,
                           "new_tokens": new_tokens, "long_prompt": long if ttft else None,
                           "n_ctx": max(PROMPT_TOKENS + new_tokens, long_prompt + 1) + 16}
                    try:
                        mine[c]["rounds"].append(run_worker(pythons[c[0]], req, timeout))
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        mine[c]["status"] = f"failed: {exc}"
                    if progress:
                        progress(mine[c])
            ref = mine.get(("fastdecode", "float32"), {}).get("rounds", [])
            for row in mine.values():
                for x, want in zip(row["rounds"], ref):  # leading greedy tokens equal to fastdecode float32's
                    x["same_tokens_as_fastdecode_float32"] = next(
                        (i for i, (a, b) in enumerate(zip(x["ids"], want["ids"])) if a != b), len(x["ids"]))
                done = [x["decode_tokens_per_s"] for x in row["rounds"] if x["decode_tokens_per_s"]]
                row["decode_tokens_per_s"] = float(np.median(done)) if done else None
            rows.extend(mine.values())
    return rows


# ---------------------------------------------------------------------------
# Entry point: bench/peers.py, and bench/decode.py --peers
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated bench checkpoints ({', '.join(MODELS)}) or NAME=HF_DIR")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one round, {QUICK_NEW_TOKENS} new tokens, a {QUICK_LONG_PROMPT}-token long prompt")
    parser.add_argument("--formats", default=None,
                        help=f"fastdecode formats to compare, comma-separated (default all: {', '.join(g[0] for g in GROUPS)})")
    parser.add_argument("--engines", default=None,
                        help=f"peers, comma-separated (default all: {', '.join(e for e in ENGINES if e != 'fastdecode')})")
    parser.add_argument("--no-ttft", action="store_true", help="skip the time to first token of the long prompt")
    parser.add_argument("--peer-python", action="append", default=[], metavar="ENGINE=PYTHON",
                        help=f"the interpreter that runs ENGINE ({', '.join(e for e in ENGINES if e != 'fastdecode')});"
                             " also $FASTDECODE_PEER_PYTHON_<ENGINE>, $FASTDECODE_PEER_PYTHON; default: this one")
    parser.add_argument("--cache", default=None, help=f"checkpoint and file cache (default {default_cache_dir()})")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one worker process may take")
    parser.add_argument("--json", metavar="PATH", help="write machine, rows, comparisons as JSON")
    args = parser.parse_args(argv)
    split = lambda s: None if s is None else [x.strip() for x in s.split(",")]  # noqa: E731
    try:
        pythons = peer_pythons(args.peer_python)
        groups = select(split(args.formats), split(args.engines))
    except ValueError as exc:
        parser.error(str(exc))
    models = {}
    for spec in (s.strip() for s in args.models.split(",")):
        name, _, path = spec.partition("=")
        if not path and name not in MODELS:
            parser.error(f"unknown model {name!r}: choose from {', '.join(MODELS)} or give NAME=HF_DIR")
        models[name] = path or checkpoint(name, args.cache)
    rounds = args.rounds or (1 if args.quick else 3)
    new_tokens = QUICK_NEW_TOKENS if args.quick else NEW_TOKENS
    long_prompt = 0 if args.no_ttft else (QUICK_LONG_PROMPT if args.quick else LONG_PROMPT)
    m = machine()
    print(describe(m), file=sys.stderr)

    def progress(row):
        last = row["rounds"][-1]["decode_tokens_per_s"] if row["status"] == "ok" else _short(row["status"])
        print(f"  {row['model']} {row['threads']}T {row['contender']}: {last}", file=sys.stderr, flush=True)

    rows = run(models, harness.resolve_threads(args.threads), rounds, new_tokens, long_prompt, pythons,
               args.cache or default_cache_dir(), groups, progress=progress, timeout=args.timeout)
    print(describe(m))
    print("\n".join(["", "Engines:", *engines(rows), "", "Files:",
                      *dict.fromkeys(f"- {r['model']} {r['contender']}: {r['made_by']}" for r in rows if r["made_by"])]))
    print(f"\nDecode tokens/s, {PROMPT_TOKENS}-token prompt, {new_tokens} new tokens, greedy, batch 1: "
          f"(T({new_tokens}) - T(1)) / {new_tokens - 1} per token, each contender in its own process, "
          f"{rounds} round(s) in rotated order; ratio = fastdecode / peer. GGUF files written by fastdecode.\n")
    print(table(rows, groups, m["l3_bytes"]))
    print(f"\n(peer = fd float32: how many of the first run's {new_tokens} greedy tokens equal fastdecode float32's "
          f"in the same round; formats other than float32 may part at a near-tie of the random weights)")
    if long_prompt:
        print(f"\nTime to first token after a {long_prompt}-token prompt (median seconds):\n")
        print(ttft_table(rows, groups))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "settings": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": new_tokens,
                                                  "long_prompt_tokens": long_prompt, "rounds": rounds,
                                                  "pythons": pythons, "models": models},
                       "rows": rows, "comparisons": comparisons(rows, groups),
                       "time_to_first_token": time_to_first_token(rows, groups)},
                      f, indent=2)
    return 0
