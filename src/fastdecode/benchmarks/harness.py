"""The benchmark harness: interleaved timing, medians, ratios, JSON.

Every case names its contenders (callables with no arguments, inputs bound
in advance). For each thread count the harness sets the same count on every
library (fastdecode's worker pool, PyTorch, NumPy's BLAS through threadpoolctl),
then runs rounds in which each contender takes one timed sample, in rotated
order, so slow drifts of a shared machine hit every contender alike. A
sample times enough calls to last about ``sample_s``; the reported figure is
the median time per call over all rounds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Callable

import numpy as np

BASELINE = "fastdecode-c"


@dataclasses.dataclass
class Case:
    kernel: str  # "softmax", "sampling", ...
    name: str  # shape and parameters, as printed
    contenders: dict[str, Callable[[], object]]
    params: dict = dataclasses.field(default_factory=dict)  # for JSON and plots
    baseline: str = BASELINE
    # measurements of the machine (a bandwidth read, ...) that take their turn
    # in the same rotation as the contenders, so they see the same stretch of
    # a shared machine; reported in the row's "probe_s", not in the table
    probes: dict[str, Callable[[], object]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------
# Peers and threads
# ---------------------------------------------------------------------------

def optional_import(name: str):
    """The module, or None when the peer is not installed (the case then skips it)."""
    try:
        return __import__(name)
    except ImportError:
        return None


def resolve_threads(spec: str) -> list[int]:
    """'1,all' -> [1, os.cpu_count()] (deduplicated, in order)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        n = os.cpu_count() or 1 if part == "all" else int(part)
        if n < 1:
            raise ValueError(f"thread counts must be >= 1; got {part!r}")
        if n not in out:
            out.append(n)
    return out


@contextlib.contextmanager
def threads(n: int):
    """Run the block with n threads in every library that has a pool."""
    import fastdecode

    before_fd = fastdecode.get_num_threads()
    fastdecode.set_num_threads(n)
    torch = sys.modules.get("torch")
    before_torch = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(n)
    tpc = optional_import("threadpoolctl")
    limiter = tpc.threadpool_limits(limits=n) if tpc else contextlib.nullcontext()
    try:
        with limiter:
            yield
    finally:
        fastdecode.set_num_threads(before_fd)
        if torch:
            torch.set_num_threads(before_torch)


def _version(dist: str):
    """An installed package's version (imported or not: a peer may run in a worker process), or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import fastdecode

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "fastdecode": fastdecode.__version__,
        "simd": fastdecode.get_simd(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


# ---------------------------------------------------------------------------
# A process of its own (for PyTorch)
# ---------------------------------------------------------------------------
# torch runs its kernels on GNU OpenMP, whose idle threads poll for a few
# milliseconds after each parallel region (libgomp's default): in one
# process, they would hold the cores of whichever contender is timed after
# torch. The kernel cases keep torch in this process (timed across processes,
# the other process's polling threads took the core a contender needs), and
# `fastdecode bench` starts torch with OMP_WAIT_POLICY=passive (passive_torch)
# unless the user chose a policy: its workers then sleep at once, as
# fastdecode's do by default. (Pausing before each sample instead, so that
# polling threads settle, made every contender pay for waking a halted vCPU;
# figures in docs/tuning.md.) The end-to-end benchmark (decode.py) runs transformers at its
# own defaults in a Worker process, which lets its threads settle before it
# answers; the two processes take turns.

_passive_set = False  # OMP_WAIT_POLICY in os.environ is ours, not the user's


def passive_torch() -> bool:
    """Set OMP_WAIT_POLICY=passive for torch, if torch is not loaded yet and
    the user has not chosen a policy. Returns whether it was set."""
    global _passive_set
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "passive"
    _passive_set = True
    return True


class Worker:
    """A Python process that runs `code` with `args`, answers one JSON line
    per request line, with the user's environment (without the
    OMP_WAIT_POLICY of passive_torch: a peer there runs at its defaults).
    Its stderr is kept for the error message when it fails."""

    def __init__(self, code: str, *args: str):
        import subprocess
        import tempfile
        import weakref

        env = dict(os.environ)
        if _passive_set:
            env.pop("OMP_WAIT_POLICY", None)
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        self._finalizer = weakref.finalize(self, _stop_worker, self._proc, self._log)
        self._reply()  # "ready"

    def request(self, **req):
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self._finalizer()

    def _reply(self):
        line = self._proc.stdout.readline()
        try:
            return json.loads(line)
        except ValueError:
            self._log.seek(0)
            tail = self._log.read()[-2000:]
            raise RuntimeError(f"the benchmark worker process failed (exit code {self._proc.poll()}):\n{tail}") \
                from None


def _stop_worker(proc, log) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except Exception:
        proc.kill()
    log.close()


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

def _seconds(fn, n: int) -> float:
    """Wall time of n calls of fn."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def _calls_per_sample(fn, sample_s: float) -> int:
    fn()  # warm-up: first-call costs (allocation, lazy init) are not the steady state
    dt = _seconds(fn, 1)
    return max(1, min(10_000, int(sample_s / max(dt, 1e-7))))


def time_case(case: Case, rounds: int, sample_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of each contender and of each probe, sampled
    in one rotated order."""
    if case.contenders.keys() & case.probes.keys():
        raise ValueError(f"case {case.name!r}: a probe has a contender's name")
    calls = {**case.contenders, **case.probes}
    names = list(calls)
    number = {k: _calls_per_sample(calls[k], sample_s) for k in names}
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            samples[k].append(_seconds(calls[k], number[k]) / number[k])
    med = {k: float(np.median(v)) for k, v in samples.items()}
    return {k: med[k] for k in case.contenders}, {k: med[k] for k in case.probes}


def run(cases: list[Case], thread_counts: list[int], rounds: int = 15, sample_s: float = 0.005,
        progress=None) -> list[dict]:
    """Time every case at every thread count; one result row per (case, threads)."""
    rows = []
    for n in thread_counts:
        with threads(n):
            for case in cases:
                med, probes = time_case(case, rounds, sample_s)
                base = med.get(case.baseline)
                rows.append({
                    "kernel": case.kernel, "case": case.name, "threads": n, "params": dict(case.params),
                    "baseline": case.baseline,
                    "median_s": med,
                    # how many times faster the baseline is than each contender
                    "speedup": {k: (v / base if base else None) for k, v in med.items() if k != case.baseline},
                })
                if probes:
                    rows[-1]["probe_s"] = probes
                if progress is not None:
                    progress(rows[-1])
    return rows


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def table(rows: list[dict]) -> str:
    """Markdown table: one line per (case, threads, contender)."""
    lines = ["| kernel | case | threads | contender | median | baseline speed-up |",
             "|---|---|---:|---|---:|---:|"]
    for row in rows:
        for k, v in row["median_s"].items():
            sp = "baseline" if k == row["baseline"] else f"{row['speedup'][k]:.2f}x"
            lines.append(f"| {row['kernel']} | {row['case']} | {row['threads']} | {k} | {_fmt_time(v)} | {sp} |")
    return "\n".join(lines)


def write_json(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": machine(), "results": rows}, f, indent=2)


KERNEL_MODULES = ("softmax", "sampling", "attention", "linear", "norm", "decode")


def available_modules(names=KERNEL_MODULES) -> list:
    """The benchmark modules of fastdecode.benchmarks that exist in this build."""
    import importlib

    mods = []
    for name in names:
        try:
            mods.append(importlib.import_module(f"fastdecode.benchmarks.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"fastdecode.benchmarks.{name}":
                raise
    return mods


EXTRA = "pip install 'fastdecode[bench]'"  # the extra that installs every optional benchmark dependency


def ready_modules(args, modules: list) -> list:
    """The modules whose dependencies are installed (a module may define
    ``unavailable() -> reason or None``); the others are skipped with a note.
    Raises ImportError, naming the extra, when ``--plot`` lacks matplotlib or
    no module can run."""
    if getattr(args, "plot", None) and optional_import("matplotlib") is None:
        raise ImportError(f"--plot needs matplotlib: {EXTRA}")
    ready, reasons = [], []
    for module in modules:
        why = getattr(module, "unavailable", lambda: None)()
        if why:
            reasons.append(why)
            print(f"note: {why}; skipped", file=sys.stderr)
        else:
            ready.append(module)
    if not ready:
        raise ImportError("no benchmark can run: " + "; ".join(reasons))
    return ready


def add_arguments(parser) -> None:
    parser.add_argument("--threads", default="1,all", help="thread counts, e.g. '1,all' (default) or '2'")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds (85 s for all kernels on 2 cores)")
    parser.add_argument("--rounds", type=int, default=None, help="timed samples per contender (default 15, quick 5)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG: time per call and speed-ups, one panel per kernel")


def execute(args, modules: list) -> list[dict]:
    """Run the cases of `modules` as the parsed arguments say; print the table."""
    from tqdm import tqdm

    modules = ready_modules(args, modules)  # every optional dependency checked before anything runs
    if passive_torch():
        print("note: torch runs with OMP_WAIT_POLICY=passive here, so that its idle threads sleep between "
              "calls as fastdecode's do (see fastdecode.benchmarks.harness)", file=sys.stderr)
    peers = {name: optional_import(name) is not None for name in ("scipy", "torch", "transformers")}
    for name, present in peers.items():
        if not present:
            print(f"note: {name} is not installed; its contenders are skipped", file=sys.stderr)
    cases = [c for m in modules for c in m.cases(args.quick)]
    thread_counts = resolve_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 15)
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1; got {rounds}")
    print(json.dumps(machine()), file=sys.stderr)
    with tqdm(total=len(cases) * len(thread_counts), desc="benchmarks", unit="case", file=sys.stderr) as bar:
        def progress(row):
            bar.set_postfix_str(f"{row['kernel']} {row['case']} {row['threads']}T")
            bar.update()

        rows = run(cases, thread_counts, rounds=rounds, progress=progress)
    print(table(rows))
    for module in modules:  # optional per-kernel remarks; may add to the rows' params
        for line in getattr(module, "notes", lambda rows: [])(rows):
            print(line)
    if args.json:
        write_json(args.json, rows)
    if args.plot:
        from .plot import plot

        plot(rows, args.plot)
    return rows


def main(modules: list, argv=None, description: str = "") -> int:
    """Command-line entry shared by bench/*.py."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    execute(parser.parse_args(argv), modules)
    return 0
