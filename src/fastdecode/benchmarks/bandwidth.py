"""The machine's memory read bandwidth, measured the way a decode step reads
memory: every thread streams its share of one large float32 array, once, with
vector loads (the C kernel ``fd_read_sum_f32``).

    from fastdecode.benchmarks.bandwidth import read_gbps
    read_gbps()             # GB/s (1e9 bytes/s) with fastdecode's thread count
    read_gbps(threads=1)    # one core

A decode step that must read ``n`` bytes (weights, KV cache) cannot take less
than ``n / (read_gbps() * 1e9)`` seconds: that is the floor to compare with.
The array defaults to 512 MiB or 16 times the last-level cache, whichever is
larger, so the figure is DRAM's, not a cache's.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["read_gbps", "read_probe", "probe_gbps", "default_nbytes"]

_MIN_NBYTES = 512 << 20


def _last_level_cache_bytes() -> int | None:
    """Size of the CPU's L3 (Linux sysfs), or None when unknown."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip().upper()
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except ValueError:
        return None


def default_nbytes() -> int:
    """512 MiB, or 16x the L3 cache when that is larger."""
    return max(_MIN_NBYTES, 16 * (_last_level_cache_bytes() or 0))


def read_probe(nbytes: int | None = None):
    """A zero-argument callable that reads an array of ``nbytes`` (default
    :func:`default_nbytes`) once with fastdecode's current thread count and
    checks that every element was read, and the bytes it reads. For timing the
    machine's bandwidth in the same rotation as other work (a benchmark
    case's probe). Needs the C backend."""
    from .. import backend as fd_backend

    if fd_backend._native is None:
        raise ImportError(f"the read bandwidth probe needs the 'c' backend: {fd_backend._c_error}")
    nbytes = default_nbytes() if nbytes is None else nbytes
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 4096:
        raise ValueError(f"nbytes must be an int >= 4096; got {nbytes!r}")
    from ..arrays import empty_aligned

    x = empty_aligned(int(nbytes) // 4)  # the memory the kernels' inputs get (huge pages where offered)
    x[...] = 1.0  # every page touched before timing
    read_sum = fd_backend._native.read_sum_f32

    def read_once() -> float:
        total = read_sum(x)
        if total != x.size:  # the sum of ones proves every element was read
            raise RuntimeError(f"read_sum_f32 returned {total}, expected {x.size}")
        return total

    return read_once, x.nbytes


def probe_gbps(probe, repeats: int = 7) -> float:
    """Median GB/s of ``repeats`` timed calls of a :func:`read_probe` pair
    ``(read_once, nbytes)``, after one untimed call (threads started, TLB
    filled), at fastdecode's current thread count."""
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive int; got {repeats!r}")
    read_once, size = probe
    read_once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_once()
        times.append(time.perf_counter() - t0)
    return size / float(np.median(times)) / 1e9


def read_gbps(nbytes: int | None = None, threads: int | None = None, repeats: int = 7) -> float:
    """Median read bandwidth, in GB/s (1e9 bytes per second), of ``repeats``
    passes over an array of ``nbytes`` (default :func:`default_nbytes`), read
    by ``threads`` threads (default: fastdecode's current count). Needs the
    C backend."""
    from .. import backend as fd_backend

    probe = read_probe(nbytes)
    before = fd_backend.get_num_threads()
    if threads is not None:
        fd_backend.set_num_threads(threads)
    try:
        return probe_gbps(probe, repeats)
    finally:
        fd_backend.set_num_threads(before)
