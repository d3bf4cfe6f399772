"""Weight formats against float32 on one checkpoint: next-token KL
divergence, greedy agreement, resident memory. Used by
tests/test_quant_models.py (which bounds them) and bench/formats.py (which
writes the tables in docs/performance-formats.md).

    python bench/formats.py [--models gpt2-124m,llama-125m] [--positions 256]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

SPECS = ("bf16", "f16", "q8_0", "q6_K", "q4_k_m", "q4_K", "q4_0")
CHUNK = 32  # tokens per forward call: decode-sized (<= INT8_X_MAX_ROWS), so the int8 kernels run


def log_probs(model, tokens) -> np.ndarray:  # tokens: [T] -> [T, V] float64 log-probabilities of the next token
    cache = model.new_cache(1, len(tokens))
    out = []
    for i in range(0, len(tokens), CHUNK):
        logits = model.forward(np.asarray([tokens[i:i + CHUNK]]), cache, all_logits=True)[0].astype(np.float64)
        out.append(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True))
    return np.concatenate(out)


def mean_kl(ref_logp, logp) -> float:
    """mean over positions of KL(float32 || format) of the next-token distributions, in nats."""
    return float(np.mean(np.sum(np.exp(ref_logp) * (ref_logp - logp), axis=-1)))


def greedy_agreement(ref_model, model, prompt, n: int) -> dict:
    """Greedy tokens of both; where they part, the float32 model's logit
    margin there (top-1 minus the format's pick): a small margin is a near-tie."""
    a = ref_model.generate(list(prompt), max_new_tokens=n, ignore_eos=True).token_ids
    b = model.generate(list(prompt), max_new_tokens=n, ignore_eos=True).token_ids
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    result = {"agree": first is None, "first_divergence": first, "margin": None}
    if first is not None:
        cache = ref_model.new_cache(1, len(prompt) + first + 1)
        logits = ref_model.forward(np.asarray([list(prompt) + list(a[:first])]), cache)[0]
        result["margin"] = float(logits[a[first]] - logits[b[first]])
    return result


def rss_bytes(directory: str, spec) -> int:
    """Resident memory of a fresh process after ``fd.load(directory, weights=spec)``."""
    code = ("import sys, fastdecode as fd\n"
            "m = fd.load(sys.argv[1], weights=None if sys.argv[2] == 'None' else sys.argv[2])\n"
            "import gc; gc.collect()\n"
            "print(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) * 1024)\n")
    out = subprocess.run([sys.executable, "-c", code, directory, str(spec)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def baseline_rss() -> int:
    """Resident memory of a fresh process that imported fastdecode and its loader, no model."""
    code = ("import fastdecode as fd, fastdecode.model, safetensors, gguf.quants\n"
            "print(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) * 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def n_params(model) -> int:
    import dataclasses

    w = model.weights
    seen, total = set(), 0
    tensors = [w.embed, w.head, w.positions, w.final_norm, w.final_norm_bias]
    tensors += [getattr(layer, f.name) for layer in w.layers for f in dataclasses.fields(layer)]
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += int(np.prod(t.shape))
    return total


def main(argv=None) -> int:
    import fastdecode as fd

    from . import decode

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpt2-124m,llama-125m")
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = []
    base = baseline_rss()
    for name in args.models.split(","):
        directory = decode.checkpoint(name)
        ref = fd.load(directory)
        params = n_params(ref)
        tokens = np.random.default_rng(1).integers(0, ref.config.vocab_size, args.positions).tolist()
        ref_logp = log_probs(ref, tokens)
        rss = rss_bytes(directory, None) - base
        rows.append({"model": name, "weights": "float32", "kl": 0.0, "rss_mib": rss / 2**20,
                     "rss_bytes_per_weight": rss / params, "read_mib_per_token": ref.weights.nbytes_per_token() / 2**20})
        for spec in SPECS:
            model = fd.load(directory, weights=spec)
            rss = rss_bytes(directory, spec) - base
            agree = greedy_agreement(ref, model, tokens[:32], 32) if spec in ("bf16", "q8_0") else None
            rows.append({"model": name, "weights": spec, "kl": mean_kl(ref_logp, log_probs(model, tokens)),
                         "rss_mib": rss / 2**20, "rss_bytes_per_weight": rss / params,
                         "read_mib_per_token": model.weights.nbytes_per_token() / 2**20, "greedy": agree})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del model
    print("| model | weights | mean KL vs float32 (nats, %d positions) | RSS over a bare process (MiB) | bytes/weight | "
          "MiB read per token | greedy 32 tokens vs float32 |" % args.positions)
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        g = r.get("greedy")
        gtxt = "-" if not g else ("same" if g["agree"] else f"parts at {g['first_divergence']}, margin {g['margin']:.3g}")
        print(f"| {r['model']} | {r['weights']} | {r['kl']:.2e} | {r['rss_mib']:.0f} | {r['rss_bytes_per_weight']:.2f} | "
              f"{r['read_mib_per_token']:.1f} | {gtxt} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
