"""Transparent huge pages on or off (FASTDECODE_HUGE_PAGES; fastdecode.arrays
says what they are for), alternating in one process at the same thread count:

  - generate()'s time per decoded token on the decode benchmark's checkpoints
    (bench/decode.py builds them once): two models loaded from the same
    files, one with its weights and KV cache on 4 KiB pages, one on huge
    pages; ms/token is (T(1 + n) - T(1)) / n, as in bench/decode.py;
  - the attention kernel on a cold KV cache (Hq 32, Hkv 8, D 128, Tk 4096),
    each call on the next of several copies.

Each round times both settings, in alternating order; the medians, their
ratio and the number of rounds in which huge pages were faster are printed.

    python bench/huge_pages.py [--threads 1,2] [--rounds 10] [--models gpt2-124m,llama-125m]
"""
import argparse
import itertools
import os
import time

import numpy as np

import fastdecode as fd
from fastdecode.benchmarks import attention, decode
from fastdecode.benchmarks.harness import resolve_threads

SETTINGS = ("0", "1")  # FASTDECODE_HUGE_PAGES: off, on
PROMPT = list(range(1, 1 + decode.PROMPT_TOKENS))


def with_pages(setting, fn, *args):
    """fn(*args) with FASTDECODE_HUGE_PAGES=setting (read when empty_aligned allocates)."""
    before = os.environ.get("FASTDECODE_HUGE_PAGES")
    os.environ["FASTDECODE_HUGE_PAGES"] = setting
    try:
        return fn(*args)
    finally:
        if before is None:
            del os.environ["FASTDECODE_HUGE_PAGES"]
        else:
            os.environ["FASTDECODE_HUGE_PAGES"] = before


def ms_per_token(model, n):
    t0 = time.perf_counter()
    model.generate(PROMPT, max_new_tokens=1, ignore_eos=True, rng=0)
    t1 = time.perf_counter()
    model.generate(PROMPT, max_new_tokens=1 + n, ignore_eos=True, rng=0)  # the KV cache is allocated here
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / n * 1e3


def attention_us(sets, turn):
    q, k, v = sets[next(turn) % len(sets)]
    t0 = time.perf_counter()
    fd.attention(q, k, v)
    return (time.perf_counter() - t0) * 1e6


def kv_sets(copies=6, hq=32, hkv=8, d=128, tk=4096):
    """Copies of one decode case's q, k, v, allocated as the attention benchmark does (fd.empty_aligned)."""
    rng = np.random.default_rng(0)
    return [attention._qkv(rng, hq, hkv, 1, tk, d) for _ in range(copies)]


def alternate(label, rounds, fns, unit):
    """fns: {setting: () -> float}; prints medians, ratio and wins."""
    times = {s: [] for s in SETTINGS}
    for r in range(rounds):
        for s in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            times[s].append(fns[s]())
    off, on = (float(np.median(times[s])) for s in SETTINGS)
    wins = sum(a > b for a, b in zip(times["0"], times["1"]))
    print(f"| {label} | {off:.2f} {unit} | {on:.2f} {unit} | {off / on:.3f}x | {wins}/{rounds} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,all")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default=",".join(decode.MODELS))
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    models = {name: {s: with_pages(s, fd.load, decode.checkpoint(name)) for s in SETTINGS} for name in names}
    sets = {s: with_pages(s, kv_sets) for s in SETTINGS}
    turn = itertools.count()  # every call takes the next copy: cold
    print("| case | 4 KiB pages | huge pages | speed-up | rounds huge pages won |")
    print("|---|---:|---:|---:|---:|")
    for n in resolve_threads(args.threads):
        fd.set_num_threads(n)
        for name in names:
            for s in SETTINGS:  # warm-up: first-call costs
                with_pages(s, ms_per_token, models[name][s], 4)
            alternate(f"{name} generate(), {n} thread(s)", args.rounds,
                      {s: (lambda s=s: with_pages(s, ms_per_token, models[name][s], args.new_tokens))
                       for s in SETTINGS}, "ms/token")
        alternate(f"attention Hq32/Hkv8 D128 Tk4096 cold, {n} thread(s)", args.rounds * 5,
                  {s: (lambda s=s: attention_us(sets[s], turn)) for s in SETTINGS}, "us")


if __name__ == "__main__":
    main()
