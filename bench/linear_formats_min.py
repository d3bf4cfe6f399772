"""The weight formats' linear kernels (bench/linear.py's format cases),
timed call by call in rotation, reporting the *minimum* of many single
calls beside the median: on a machine shared with other work, the fastest
call is the one no other process interrupted, so min/min ratios (a
format's read rate of its packed bytes against the probe's best read
rate) stay meaningful when medians are dominated by the scheduler.

The order is shuffled every round (seeded): in a fixed rotation each
contender always followed the same one, and a call right after NumPy's
matmul (OpenBLAS's threads still polling on the second core) ran 25-40 us
slower at 2 threads, which fell on q8_0 alone (docs/performance-formats.md).

Workers poll between calls for --spin-us microseconds (default 300: as
generate() runs its decode steps; fd.set_worker_spin), so a second thread
joins a call at once; 0 times the sleep-at-once default of a lone call.

    python bench/linear_formats_min.py [--threads 1,2] [--calls 200] [--spin-us 300] [--json PATH]
"""
import argparse
import json
import sys
import time

import numpy as np

from fastdecode.benchmarks import harness, linear


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--calls", type=int, default=200, help="calls per contender, in rotation")
    parser.add_argument("--spin-us", type=float, default=300.0, help="worker polling between calls (us)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    import fastdecode as fd

    fd.set_worker_spin(args.spin_us)
    cases = linear.format_cases(quick=False)
    rows = []
    for n in harness.resolve_threads(args.threads):
        with harness.threads(n):
            for case in cases:
                fns = {**case.contenders, **case.probes}
                times = {k: [] for k in fns}
                order = np.random.default_rng(0)
                for i in range(args.calls):
                    for k in order.permutation(list(fns)):
                        t0 = time.perf_counter()
                        fns[k]()
                        times[k].append(time.perf_counter() - t0)
                probe = min(times[linear.PROBE])
                machine = case.params["probe_bytes"] / probe / 1e9
                row = {"case": case.name, "threads": n, "spin_us": args.spin_us, "machine_gbps_best": machine, "contenders": {}}
                for k, ts in times.items():
                    if k == linear.PROBE:
                        continue
                    key = {"torch int8 weight-only": "torch int8", "torch int4 weight-only": "torch int4"}.get(
                        k, k.split(" ", 1)[1])
                    gbps = case.params["bytes"][key] / min(ts) / 1e9
                    row["contenders"][k] = {"min_s": min(ts), "median_s": float(np.median(ts)), "gbps_best": gbps,
                                            "of_probe": gbps / machine}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"| shape | threads | probe best GB/s | " + " | ".join(rows[0]["contenders"]) + " |")
    print("|---|---:|---:|" + "---:|" * len(rows[0]["contenders"]))
    for r in rows:
        cells = [f"{c['min_s'] * 1e6:.0f} us, {c['gbps_best']:.1f} GB/s ({100 * c['of_probe']:.0f}%)"
                 for c in r["contenders"].values()]
        print(f"| {r['case']} | {r['threads']} | {r['machine_gbps_best']:.1f} | " + " | ".join(cells) + " |")
    if args.json:
        harness.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
