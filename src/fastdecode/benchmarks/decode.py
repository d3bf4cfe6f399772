"""End-to-end decoding: fastdecode's ``generate()`` against transformers'
``generate()`` on the same checkpoint, same prompt, same thread count.

Models (random weights, built once and kept in a cache directory):
``gpt2-124m`` (transformers' ``GPT2Config()`` defaults) and ``llama-125m``
(hidden 768, 12 layers, 12 heads, 4 KV heads, intermediate 2048, vocab
32000, untied head). Prompt 32 tokens, 128 new tokens, greedy and top-k 50 +
top-p 0.9, eos ignored so every run makes all 128 tokens.

Reported per (model, mode, threads, contender):
- tokens/s: new tokens / wall time of the whole generate() call;
- time per token: (T(128 new) - T(1 new)) / 127, the decode steps alone, the
  same subtraction for every contender;
- the floor: bytes of weights one decode step reads / the read bandwidth
  (``read_gbps``) at the same thread count, measured once per round between
  the contenders' turns (median).

Every (mode, contender) pair takes its turn in one rotation, so greedy and
sampling, fastdecode and transformers, and the bandwidth probe see the same
stretch of this shared machine.

    python bench/decode.py [--threads 1,all] [--quick] [--rounds N] [--json PATH] [--cache DIR]
    python bench/decode.py --peers [peers.py's arguments]    # the engines side by side (peers.py)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from . import harness
from .bandwidth import probe_gbps, read_probe
from .harness import Case, optional_import

PROMPT_TOKENS = 32
NEW_TOKENS = 128
MODELS = {
    "gpt2-124m": ("GPT2Config", {}),
    "llama-125m": ("LlamaConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                                       max_position_embeddings=2048, tie_word_embeddings=False)),
}
MODES = {
    "greedy": dict(do_sample=False),
    "top-k 50 + top-p 0.9": dict(do_sample=True, top_k=50, top_p=0.9),
}
BASELINE, PEER = "fastdecode-c", "transformers"
TARGET_SPEEDUP, TARGET_FLOOR, TARGET_SAMPLING = 2.3, 1.2, 0.03
# weight formats run greedy, each as contender "fastdecode-c FMT" (fd.load(weights=FMT))
WEIGHTS = ("bf16", "f16", "q8_0", "q6_K", "q4_k_m", "q4_K", "q4_0")
TARGET_FORMATS = {"bf16": 1.7, "q8_0": 3.0, "q4_0": 4.5}  # tokens/s over float32, GPT-2 at the top thread count


def default_cache_dir() -> str:
    return os.environ.get("FASTDECODE_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastdecode", "bench-models")


def checkpoint(name: str, cache_dir: str | None = None) -> str:
    """The directory of model `name`, built with transformers (seed 0) on first use."""
    directory = os.path.join(cache_dir or default_cache_dir(), name)
    if not os.path.isfile(os.path.join(directory, "model.safetensors")):
        import shutil

        import torch
        import transformers

        config_cls, kwargs = MODELS[name]
        print(f"building the {name} checkpoint (random weights, once) in {directory}", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_cls)(**kwargs))
        partial = f"{directory}.partial-{os.getpid()}"  # an interrupted build never looks finished
        model.save_pretrained(partial)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(partial, directory)
    return directory


# ---------------------------------------------------------------------------
# Contenders: each a function (new_tokens) -> None that runs one generate()
# ---------------------------------------------------------------------------

def load_models(directory: str, weights=(), peer: bool = True) -> tuple:
    """(fastdecode model, transformers in its own process or None, {format:
    fastdecode model loaded with weights=format}) of one checkpoint."""
    import importlib.util

    import fastdecode

    hf = PeerProcess(directory) if peer and importlib.util.find_spec("transformers") is not None \
        else None
    # every run prefills its prompt, as the peers do: no prefix cache
    return (fastdecode.load(directory, prefix_cache_mb=0), hf,
            {w: fastdecode.load(directory, weights=w, prefix_cache_mb=0) for w in weights})


# transformers runs in a worker process of its own, at torch's own OpenMP
# settings (harness.Worker says why); the parent times each request.
_PEER_WORKER = r"""
import json, sys, time
import torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
model.generation_config.eos_token_id = None  # like ignore_eos: every run makes all its tokens
model.generation_config.pad_token_id = 0
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    torch.set_num_threads(req["threads"])
    with torch.no_grad():
        ids = torch.tensor([req["prompt"]])  # the mask given: else prompt ids equal to pad_token_id are masked
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=req["n"], **req["mode"])
    time.sleep(0.03)  # torch's idle OpenMP workers spin for a while (harness.Worker)
    print(json.dumps("done"), flush=True)
"""


class PeerProcess(harness.Worker):
    """transformers ``generate()`` on one checkpoint, in a worker process;
    :meth:`generate` blocks until the worker has finished."""

    def __init__(self, directory: str):
        super().__init__(_PEER_WORKER, directory)

    def generate(self, prompt: list, new_tokens: int, mode: dict, threads: int) -> None:
        self.request(prompt=prompt, n=new_tokens, mode=mode, threads=threads)


# fastdecode-c runs the compiled step (one C call per token, fastdecode.model.compiled);
# fastdecode-c-kernels the same C kernels one Python call at a time (use_compiled(False))
CONTENDERS = ("fastdecode-c", "fastdecode-c-kernels", "fastdecode-numpy", PEER)
PAIRED = ("fastdecode-c", "fastdecode-c-kernels")  # the per-round ratio the table reports


def _backend_of(name: str) -> str:
    return "numpy" if name == "fastdecode-numpy" else "c"


def contenders(models: tuple, mode: dict, prompt: np.ndarray, names=CONTENDERS, backends=None) -> dict:
    """{contender: run(new_tokens)} for one mode (fastdecode's only on `backends`, when given)."""
    import fastdecode
    from fastdecode.model.compiled import use_compiled

    if backends is not None:
        names = tuple(c for c in names if c == PEER or _backend_of(c) in backends)

    model, hf = models[:2]
    out = {}
    for name in names:
        backend = _backend_of(name)
        if name == PEER or backend not in fastdecode.backend_info()["available"]:
            continue

        def run(n, backend=backend, compiled=name != "fastdecode-c-kernels"):
            with fastdecode.use_backend(backend), use_compiled(compiled):
                model.generate(prompt.tolist(), max_new_tokens=n, ignore_eos=True, rng=0, **mode)

        out[name] = run
    if hf is not None and PEER in names:
        out[PEER] = lambda n: hf.generate(prompt.tolist(), n, mode, fastdecode.get_num_threads())
    if not mode.get("do_sample") and "c" in fastdecode.backend_info()["available"]:
        for spec, m in (models[2] if len(models) > 2 else {}).items():
            def run_format(n, m=m):
                with fastdecode.use_backend("c"):
                    m.generate(prompt.tolist(), max_new_tokens=n, ignore_eos=True, rng=0, **mode)

            out[f"{BASELINE} {spec}"] = run_format
    return out


def _model_of(loaded, contender):  # the fastdecode model a contender runs (its weights' bytes per token)
    spec = contender[len(BASELINE) + 1:] if contender.startswith(BASELINE + " ") else None
    return loaded[2][spec] if spec else loaded[0]


def measure(fns: dict, rounds: int, new_tokens: int, bandwidth=None) -> tuple[dict, float | None]:
    """Median seconds of generate(new_tokens) and generate(1) per contender, in
    rotated order, and the median of ``bandwidth()`` taken once per round
    (GB/s; None without it), so the floor is measured across the same
    stretch of time as the contenders: this VM's bandwidth comes and goes."""
    names = list(fns)
    for fn in fns.values():  # warm-up: first-call costs (allocation, lazy init, page faults)
        fn(2)
    full = {k: [] for k in names}
    one = {k: [] for k in names}
    gbps = []
    for r in range(rounds):
        if bandwidth is not None:
            gbps.append(bandwidth())
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[k](new_tokens)
            t1 = time.perf_counter()
            fns[k](1)
            full[k].append(t1 - t0)
            one[k].append(time.perf_counter() - t1)
    times = {k: {"total_s": float(np.median(full[k])), "prefill_s": float(np.median(one[k])), "rounds_s": full[k]}
             for k in names}
    return times, float(np.median(gbps)) if gbps else None


def run(models, thread_counts, rounds: int, new_tokens: int, cache_dir=None, progress=None,
        weights=(), names=CONTENDERS) -> list[dict]:
    """Every (mode, contender) of a model and thread count takes turns in one
    rotation, so greedy and sampling, fastdecode and transformers, and the
    bandwidth probe all see the same machine."""
    rows = []
    prompt = np.random.default_rng(0).integers(0, 32000, PROMPT_TOKENS).astype(np.int64)
    probe = read_probe()  # allocated once: each round reads it at the thread count in use
    for name in models:
        loaded = load_models(checkpoint(name, cache_dir), weights, PEER in names)
        for n in thread_counts:
            with harness.threads(n):
                fns = {(mode_name, contender): fn for mode_name, mode in MODES.items()
                       for contender, fn in contenders(loaded, mode, prompt, names).items()}
                times, gbps = measure(fns, rounds, new_tokens, bandwidth=lambda: probe_gbps(probe, repeats=3))
                for (mode_name, contender), t in times.items():
                    per_token = (t["total_s"] - t["prefill_s"]) / (new_tokens - 1)
                    nbytes = _model_of(loaded, contender).weights.nbytes_per_token()
                    rows.append({
                        "model": name, "mode": mode_name, "threads": n, "contender": contender,
                        "prompt_tokens": PROMPT_TOKENS, "new_tokens": new_tokens,
                        "tokens_per_s": new_tokens / t["total_s"], "time_per_token_s": per_token,
                        "total_s": t["total_s"], "prefill_s": t["prefill_s"],
                        "weight_bytes_per_token": nbytes, "read_gbps": gbps,
                        "floor_s": nbytes / (gbps * 1e9), "rounds_s": t["rounds_s"],
                    })
                    if progress:
                        progress(rows[-1])
        if loaded[1] is not None:
            loaded[1].close()
        del loaded
        gc.collect()
    return rows


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def _find(rows, **key):
    return next((r for r in rows if all(r[k] == v for k, v in key.items())), None)


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | threads | contender | tokens/s | ms/token | floor ms | x floor | fastdecode-c speed-up |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = _find(rows, model=r["model"], mode=r["mode"], threads=r["threads"], contender=BASELINE)
        speedup = "baseline" if r["contender"] == BASELINE else (
            f"{base['tokens_per_s'] / r['tokens_per_s']:.2f}x" if base else "-")
        lines.append(f"| {r['model']} | {r['mode']} | {r['threads']} | {r['contender']} | {r['tokens_per_s']:.1f} | "
                     f"{r['time_per_token_s'] * 1e3:.2f} | {r['floor_s'] * 1e3:.2f} | "
                     f"{r['time_per_token_s'] / r['floor_s']:.2f} | {speedup} |")
    return "\n".join(lines)


def paired(rows: list[dict]) -> str:
    """PAIRED[0]'s tokens/s over PAIRED[1]'s, round by round (the two ran
    back to back in each rotation), and the median of those ratios."""
    lines = [f"| model | mode | threads | {PAIRED[0]} / {PAIRED[1]} per round | median |", "|---|---|---:|---|---:|"]
    for r in rows:
        if r["contender"] != PAIRED[0]:
            continue
        other = _find(rows, model=r["model"], mode=r["mode"], threads=r["threads"], contender=PAIRED[1])
        if other:
            ratios = [b / a for a, b in zip(r["rounds_s"], other["rounds_s"])]
            lines.append(f"| {r['model']} | {r['mode']} | {r['threads']} | "
                         f"{' '.join(f'{x:.3f}' for x in ratios)} | {np.median(ratios):.3f}x |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's "done when", checked at the largest thread count measured."""
    top = max(r["threads"] for r in rows)
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for mode in MODES:
            base = _find(rows, model=model, mode=mode, threads=top, contender=BASELINE)
            peer = _find(rows, model=model, mode=mode, threads=top, contender=PEER)
            if base and peer:
                ratio = base["tokens_per_s"] / peer["tokens_per_s"]
                out.append(f"{model} {mode} {top}T: {ratio:.2f}x transformers tokens/s "
                           f"(target >= {TARGET_SPEEDUP}x) {'ok' if ratio >= TARGET_SPEEDUP else 'SHORT'}")
        base = _find(rows, model=model, mode="greedy", threads=top, contender=BASELINE)
        for spec, target in TARGET_FORMATS.items():
            fmt = _find(rows, model=model, mode="greedy", threads=top, contender=f"{BASELINE} {spec}")
            if base and fmt and model.startswith("gpt2"):
                ratio = fmt["tokens_per_s"] / base["tokens_per_s"]
                out.append(f"{model} greedy {top}T: {spec} {ratio:.2f}x float32 tokens/s (target >= {target}x) "
                           f"{'ok' if ratio >= target else 'SHORT'}")
        greedy = _find(rows, model=model, mode="greedy", threads=top, contender=BASELINE)
        sampled = _find(rows, model=model, mode="top-k 50 + top-p 0.9", threads=top, contender=BASELINE)
        if greedy and model.startswith("gpt2"):
            x = greedy["time_per_token_s"] / greedy["floor_s"]
            out.append(f"{model} greedy {top}T: {x:.2f}x the floor (target <= {TARGET_FLOOR}x) "
                       f"{'ok' if x <= TARGET_FLOOR else 'SHORT'}")
        if greedy and sampled:
            extra = sampled["time_per_token_s"] / greedy["time_per_token_s"] - 1
            out.append(f"{model} {top}T: top-k + top-p costs {extra:+.1%} per token over greedy "
                       f"(target < {TARGET_SAMPLING:.0%}) {'ok' if extra < TARGET_SAMPLING else 'SHORT'}")
    return out


# ---------------------------------------------------------------------------
# Entry points: bench/decode.py, and `fastdecode bench --kernels decode`
# ---------------------------------------------------------------------------

def unavailable(cache_dir: str | None = None, models=("gpt2-124m",)) -> str | None:
    """Why this benchmark cannot run here (None when it can): its checkpoints
    are built with torch and transformers unless they are already cached."""
    if all(os.path.isfile(os.path.join(cache_dir or default_cache_dir(), m, "model.safetensors")) for m in models):
        return None
    missing = [name for name in ("torch", "transformers") if optional_import(name) is None]
    if missing:
        return (f"the decode benchmark builds its checkpoints with torch and transformers, and "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed ({harness.EXTRA})")
    return None


def cases(quick: bool) -> list:
    """For the kernel harness: one generate() call per sample (GPT-2 shape; quick: 16 new tokens)."""
    prompt = np.random.default_rng(0).integers(0, 32000, PROMPT_TOKENS).astype(np.int64)
    new = 16 if quick else NEW_TOKENS
    out = []
    loaded = load_models(checkpoint("gpt2-124m"))
    for mode_name, mode in MODES.items():
        fns = contenders(loaded, mode, prompt)
        out.append(Case("decode", f"gpt2-124m {mode_name}, {PROMPT_TOKENS}+{new} tokens",
                        {k: (lambda f=f: f(new)) for k, f in fns.items()},
                        {"model": "gpt2-124m", "mode": mode_name, "new_tokens": new}))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--peers" in argv:  # the side-by-side peer benchmark (peers.py) takes the other arguments
        from . import peers

        return peers.main([a for a in argv if a != "--peers"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true",
                        help="run bench/peers.py instead: llama.cpp, CTranslate2, onnxruntime-genai (see its --help)")
    parser.add_argument("--threads", default="1,all", help="thread counts, e.g. '1,all' (default) or '2'")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="one round, 32 new tokens")
    parser.add_argument("--rounds", type=int, default=None, help="timed runs per contender (default 3, quick 1)")
    parser.add_argument("--cache", default=None, help=f"checkpoint cache directory (default {default_cache_dir()})")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated: {', '.join(CONTENDERS)}")
    parser.add_argument("--weights", default=",".join(WEIGHTS),
                        help=f"weight formats run greedy besides float32, comma-separated, or 'none' "
                             f"(default {','.join(WEIGHTS)})")
    parser.add_argument("--backends", default="c,numpy", help="fastdecode backends to time (default c,numpy)")
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(","))
    weights = () if args.weights.strip().lower() == "none" else tuple(w.strip() for w in args.weights.split(","))
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    why = unavailable(args.cache, models)
    if why:
        parser.error(why)
    rounds = args.rounds or (1 if args.quick else 3)
    new_tokens = 32 if args.quick else NEW_TOKENS
    print(json.dumps(harness.machine()), file=sys.stderr)

    def progress(row):
        print(f"  {row['model']} {row['mode']} {row['threads']}T {row['contender']}: "
              f"{row['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)

    names = tuple(c.strip() for c in args.contenders.split(","))
    if set(names) - set(CONTENDERS):
        parser.error(f"unknown contender(s); choose from {', '.join(CONTENDERS)}")
    names = tuple(c for c in names if c == PEER or _backend_of(c) in backends)
    rows = run(models, harness.resolve_threads(args.threads), rounds, new_tokens, args.cache, progress, weights,
               names)
    print(table(rows))
    print()
    print(paired(rows))
    print()
    for line in targets(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine(), "results": rows}, f, indent=2)
    return 0
