"""Batch throughput: generate_many at several batch sizes against one-by-one
generate(), and the same job on a local Ray cluster and a Dask LocalCluster.

One job (N prompts of random token ids, each with its own length and
max_new_tokens, eos ignored so every run makes exactly the same number of
tokens) is run by every contender in each round, the order rotated between
rounds; the table gives the median generated tokens/s and the median of the
paired ratios to one-by-one generate() of the same round. The model is
loaded without a prefix cache, so a later round's generate() cannot reuse
an earlier round's prompts. Ray and Dask runs are end to end, with the
model load counted in every run (Ray: a new actor pool starts and loads the
model; Dask: the workers persist but drop their model before each run), at
the same total CPU count as in-process: `threads` actors or workers of one
CPU each, each handed one block of N / threads rows (one call, B rows
decoding at once). They are compared with the same job in process, the
model load included ("in process, load + generate_many B=..."). Each
scale-out run gets a dataset of its own (a fresh run column), so Dask
computes a new graph every time, and every run's output is checked to hold
all N rows and all the job's tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import harness
from .decode import checkpoint


IN_PROCESS = "in process, load + generate_many B={b}"  # the scale-out runs' reference
SCALE_OUT = ("Ray", "Dask")


def job(n: int, prompt_range, new_range, vocab: int, seed: int = 0) -> list:
    gen = np.random.default_rng(seed)
    return [{"prompt": gen.integers(3, vocab - 1, int(gen.integers(prompt_range[0], prompt_range[1] + 1))).tolist(),
             "max_new_tokens": int(gen.integers(new_range[0], new_range[1] + 1)), "ignore_eos": True}
            for _ in range(n)]


def contenders(model, path: str, items: list, batches, threads: int, engines, weights=None) -> dict:
    """{name: fn() -> generated tokens} for every contender; "_close" shuts the clusters down."""
    import itertools

    import fastdecode

    def one_by_one():
        return sum(len(model.generate(item["prompt"], max_new_tokens=item["max_new_tokens"], ignore_eos=True)
                       .token_ids) for item in items)

    fns = {"generate one by one": one_by_one}
    for b in batches:
        fns[f"generate_many B={b}"] = lambda b=b: sum(len(r.token_ids) for r in model.generate_many(items, max_batch=b))
    big = max(batches)
    if engines:  # what the scale-out runs are compared with: the same job in process, the model load included

        def loaded():
            fresh_model = fastdecode.load(path, weights=weights, prefix_cache_mb=0)
            return sum(len(r.token_ids) for r in fresh_model.generate_many(items, max_batch=big))
        fns[IN_PROCESS.format(b=big)] = loaded
    runs = itertools.count()
    frame = None
    if engines:
        import pandas as pd

        frame = pd.DataFrame({"prompt": [i["prompt"] for i in items],
                              "max_new_tokens": [i["max_new_tokens"] for i in items]})

    def fresh():  # -> the blocks, rows dealt round-robin; a new run column: a new Dask graph (keys) every run
        run = frame.assign(run=next(runs))
        return [run.iloc[i::parts] for i in range(parts)]

    def checked(out):  # -> tokens generated; every row there, none failed
        if len(out) != len(items) or out["error"].notna().any():
            raise RuntimeError(f"a scale-out run returned {len(out)} of {len(items)} rows or errors: "
                               f"{out['error'].dropna().head(3).tolist()}")
        return int(out["generated_tokens"].sum())

    parts = threads  # one block per actor / worker: each decodes len(items) / threads rows in one call, B rows at once
    if "ray" in engines:
        import ray

        import fastdecode.ray

        ray.init(num_cpus=threads, log_to_driver=False, include_dashboard=False)

        def on_ray():
            ds = ray.data.from_pandas(fresh())
            out = fastdecode.ray.generate(ds, model=path, concurrency=threads, num_cpus=1, max_batch=big,
                                          batch_size=-(-len(items) // parts), weights=weights, ignore_eos=True)
            return checked(out.to_pandas())
        fns[f"Ray, {threads} actors x 1 CPU, B={big}"] = on_ray
    if "dask" in engines:
        import dask
        import dask.dataframe as dd
        import distributed

        import fastdecode.batch_io
        import fastdecode.dask

        cluster = distributed.LocalCluster(n_workers=threads, threads_per_worker=1, dashboard_address=None)
        client = distributed.Client(cluster)

        def on_dask():
            client.run(fastdecode.batch_io.forget_models)  # every run loads the model, as Ray's fresh actors do
            with dask.config.set({"dataframe.convert-string": False}):  # else the token-id lists arrive as text
                df = dd.concat([dd.from_pandas(block, npartitions=1) for block in fresh()])  # the same blocks
            return checked(fastdecode.dask.generate(df, model=path, max_batch=big, num_threads=1, weights=weights,
                                                    ignore_eos=True).compute())
        fns[f"Dask, {threads} workers x 1 thread, B={big}"] = on_dask
        fns["_close"] = lambda: (client.close(), cluster.close())
    fastdecode.set_num_threads(threads)
    return fns


def measure(fns: dict, rounds: int, tokens: int) -> dict:
    close = fns.pop("_close", None)
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            made = fns[name]()
            times[name].append(time.perf_counter() - t0)
            if made != tokens:
                raise RuntimeError(f"{name} generated {made} tokens; the job has {tokens}")
            print(f"  round {r + 1}: {name}: {tokens / times[name][-1]:.1f} tokens/s", file=sys.stderr, flush=True)
    if close:
        close()
    base = times[names[0]]
    local = next((times[name] for name in names if name.startswith(IN_PROCESS.split("{")[0])), None)
    results = {name: {"tokens_per_s": tokens / statistics.median(t), "seconds": t,
                      "ratio": statistics.median(b / x for b, x in zip(base, t))} for name, t in times.items()}
    for name, t in times.items():
        if name.startswith(SCALE_OUT) and local:
            results[name]["vs_in_process"] = statistics.median(b / x for b, x in zip(local, t))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-125m", help="bench checkpoint name or a directory (default llama-125m)")
    parser.add_argument("--prompts", type=int, default=256, help="prompts in the job (default 256; e.g. 16 for a smoke run)")
    parser.add_argument("--weights", default="q8_0", help="weight format to load (default q8_0; 'none': as stored)")
    parser.add_argument("--prompt-tokens", default="16,128", help="prompt length range (default 16,128)")
    parser.add_argument("--new-tokens", default="32,256", help="max_new_tokens range (default 32,256)")
    parser.add_argument("--batch", default="1,4,16,64", help="generate_many batch sizes (default 1,4,16,64)")
    parser.add_argument("--threads", type=int, default=2, help="threads, and Ray actors / Dask workers (default 2)")
    parser.add_argument("--engines", default="ray,dask", help="scale-out engines to include: ray,dask or none")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    import fastdecode

    path = args.model if os.path.isdir(args.model) else checkpoint(args.model)
    weights = None if args.weights == "none" else args.weights
    model = fastdecode.load(path, weights=weights, prefix_cache_mb=0)
    items = job(args.prompts, [int(x) for x in args.prompt_tokens.split(",")],
                [int(x) for x in args.new_tokens.split(",")], model.config.vocab_size)
    tokens = sum(i["max_new_tokens"] for i in items)
    engines = [] if args.engines == "none" else args.engines.split(",")
    fns = contenders(model, path, items, [int(b) for b in args.batch.split(",")], args.threads, engines, weights)
    results = measure(fns, args.rounds, tokens)
    host = harness.machine()
    print(f"\n{args.model} ({args.weights} weights), {args.prompts} prompts of {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens each (eos ignored: {tokens} in all), {args.threads} threads, backend "
          f"{fastdecode.get_backend()}, {host.get('cpu', platform.machine())}; median of {args.rounds} rounds, "
          "order rotated\n")
    print("| contender | generated tokens/s | x one by one (median of paired ratios) | x in process (load included) |"
          "\n|---|---:|---:|---:|")
    for name, r in results.items():
        vs = f"{r['vs_in_process']:.2f}" if "vs_in_process" in r else ""
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f} | {vs} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": host, "tokens": tokens, "results": results}, f, indent=1)
    return 0
