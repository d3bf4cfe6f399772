"""The fixed cost of a decode step: what a token costs beyond reading its
weights, on a model so small (GPT-2 shape, d 64, 2 layers, vocab 512,
~0.5 MB of weights, all in cache) that almost all of a step is that cost.

Two paths over the same weights and the same C kernels:
- ``compiled``: ``model.compiled().forward`` (csrc/model.c, one C call);
- ``kernels``: ``transformer.forward`` on the C backend (one Python-level
  call per operation, each validated in ``fastdecode.ops``).

``--time``: microseconds per decode step, both paths alternating in one
process (rounds rotated, medians, the per-round ratio). ``--count PATH``:
run PATH's steps only (for ``valgrind --tool=callgrind``: the instructions
of N2 steps minus those of N1 steps, over N2 - N1, is the per-step count,
repeatable on a noisy machine; bench/step_overhead.py --callgrind does it).

    python bench/step_overhead.py [--time] [--callgrind] [--threads N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

CONFIG = dict(architectures=["GPT2LMHeadModel"], vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=1024)


def tiny_model():
    """A fastdecode Model with random weights (no files): GPT-2 shape above."""
    from fastdecode.model import Model
    from fastdecode.model.config import ModelConfig
    from fastdecode.model.weights import Layer, Weights

    config = ModelConfig.from_dict(CONFIG)
    rng = np.random.default_rng(0)
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    layers = [Layer(attn_norm=1 + w(d), attn_norm_bias=w(d), qkv=w(3 * d, d), qkv_bias=w(3 * d), out=w(d, d),
                    out_bias=w(d), mlp_norm=1 + w(d), mlp_norm_bias=w(d), up=w(f, d), up_bias=w(f),
                    down=w(d, f), down_bias=w(d)) for _ in range(config.num_layers)]
    embed = w(v, d)
    weights = Weights(embed=embed, positions=w(config.max_positions, d), layers=layers, final_norm=1 + w(d),
                      final_norm_bias=w(d), head=embed)
    return Model(config, weights)


def steps(model, path: str, n: int, start: int = 8):
    """n greedy decode steps after a `start`-token prompt, along `path`."""
    import fastdecode as fd
    from fastdecode.model.transformer import KVCache, forward

    cache = KVCache(model.config, 1, start + n)
    logits = np.empty((1, model.config.vocab_size), np.float32)
    tokens = np.arange(1, start + 1, dtype=np.int64)[None]
    with fd.use_backend("c"):
        if path == "compiled":
            c = model.compiled()
            c.forward(tokens, cache, out=logits)
            for _ in range(n):
                c.forward(logits.argmax(-1)[:, None], cache, out=logits)
        else:
            forward(model.weights, model.config, tokens, cache, out=logits)
            for _ in range(n):
                forward(model.weights, model.config, logits.argmax(-1)[:, None], cache, out=logits)


def timed(rounds: int = 15, n: int = 200) -> dict:
    model = tiny_model()
    paths = ["compiled", "kernels"]
    for p in paths:
        steps(model, p, 20)
    us = {p: [] for p in paths}
    for r in range(rounds):
        for p in paths[r % 2:] + paths[:r % 2]:
            t0 = time.perf_counter()
            steps(model, p, n)
            us[p].append((time.perf_counter() - t0) / n * 1e6)
    ratios = [b / a for a, b in zip(us["compiled"], us["kernels"])]
    return {"us_per_step": {p: float(np.median(v)) for p, v in us.items()}, "kernels_over_compiled": ratios,
            "median_ratio": float(np.median(ratios))}


def callgrind_instructions(path: str, n: int) -> int:
    """Instructions (Ir) of a whole process that runs n steps of `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                        os.path.abspath(__file__), "--count", path, "--steps", str(n)],
                       check=True, capture_output=True, env=dict(os.environ, FASTDECODE_NUM_THREADS="1"))
        with open(out) as f:
            summary = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        return int(summary.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time", action="store_true", help="time both paths (default when nothing else is asked)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per step with callgrind")
    parser.add_argument("--count", choices=["compiled", "kernels"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import fastdecode as fd

    fd.set_num_threads(args.threads)
    if args.count:
        steps(tiny_model(), args.count, args.steps)
        return 0
    if args.callgrind:
        n1, n2 = 50, 250
        for path in ("compiled", "kernels"):
            a, b = callgrind_instructions(path, n1), callgrind_instructions(path, n2)
            print(f"{path}: {(b - a) / (n2 - n1):,.0f} instructions per decode step (callgrind, 1 thread)")
    if args.time or not args.callgrind:
        print(timed(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
