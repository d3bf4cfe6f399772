"""generate() with the compiled step against the same C kernels called one
at a time (use_compiled(False)), alternating in one process: decode time per
token from GenerationResult.timing (prompt 32 tokens, 128 new, greedy, eos
ignored), per-round paired ratios and medians, at each thread count, for the
bench checkpoints (fastdecode.benchmarks.decode) in each weight format.

    python bench/compiled_vs_kernels.py [--models gpt2-124m,llama-125m] [--weights f32,q4_0]
                                        [--threads 1,2] [--rounds 5] [--json PATH]
"""
import argparse
import json
import sys

import numpy as np

import fastdecode as fd
from fastdecode.benchmarks import decode, harness
from fastdecode.model.compiled import use_compiled


def per_token_s(model, prompt, compiled: bool, new: int) -> float:
    with fd.use_backend("c"), use_compiled(compiled):
        r = model.generate(prompt, max_new_tokens=new, ignore_eos=True)
    return r.timing.decode_s / (new - 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2-124m,llama-125m")
    p.add_argument("--weights", default="f32,q4_0", help="f32 (as stored) and/or formats for fd.load(weights=)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new", type=int, default=decode.NEW_TOKENS)
    p.add_argument("--json")
    a = p.parse_args(argv)
    print(json.dumps(harness.machine()), file=sys.stderr)
    prompt = np.random.default_rng(0).integers(0, 32000, decode.PROMPT_TOKENS).tolist()
    rows = []
    print("| model | weights | threads | compiled ms/token | kernels ms/token | kernels / compiled per round | median |")
    print("|---|---|---:|---:|---:|---|---:|")
    for name in a.models.split(","):
        for w in a.weights.split(","):
            model = fd.load(decode.checkpoint(name), **({} if w == "f32" else {"weights": w}))
            for n in harness.resolve_threads(a.threads):
                with harness.threads(n):
                    per_token_s(model, prompt, True, 4), per_token_s(model, prompt, False, 4)  # warm-up
                    t = {True: [], False: []}
                    for r in range(a.rounds):
                        for c in ((True, False) if r % 2 == 0 else (False, True)):
                            t[c].append(per_token_s(model, prompt, c, a.new))
                ratios = [k / c for c, k in zip(t[True], t[False])]
                row = dict(model=name, weights=w, threads=n, compiled_s=t[True], kernels_s=t[False], ratios=ratios)
                rows.append(row)
                print(f"| {name} | {w} | {n} | {np.median(t[True]) * 1e3:.2f} | {np.median(t[False]) * 1e3:.2f} | "
                      f"{' '.join(f'{x:.3f}' for x in ratios)} | {np.median(ratios):.3f}x |", flush=True)
            del model
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": harness.machine(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
