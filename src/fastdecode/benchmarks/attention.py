"""Attention contenders: fastdecode (C kernel, NumPy reference) and PyTorch's
scaled_dot_product_attention (``enable_gqa=True``), float32, one sequence.

Decode (Tq = 1, the whole cache visible) at Llama-3-8B's heads (Hq 32, Hkv 8,
D 128) and GPT-2's (12, 12, 64); causal prefill (Tq = Tk).

Inputs are 64-byte aligned (:func:`fastdecode.empty_aligned`), the same
buffers for every contender. Decode reads its KV cache from memory: in a real step every other layer's
weights and caches pass through the caches between two visits of a layer.
So each decode case rotates through enough copies of K and V (together more
than twice the last-level cache) that every call of every contender reads
cold memory. The extra contender ``read-floor`` only streams the same K and V
bytes with the same threads (``fd_read_sum_f32``): the memory floor, timed
interleaved with the others. Each decode case also has a probe: one pass of
:func:`~fastdecode.benchmarks.bandwidth.read_gbps`'s read (512 MiB, the same
threads), timed in the same rotation, so the machine's read bandwidth comes
from the same stretch of a shared machine as the kernels' times. After the
table, :func:`notes` gives the rate at which the C kernel reads the cache,
against the probe's bandwidth and against the floor (JSON params:
``c_read_gbps``, ``machine_read_gbps``, ``floor_read_gbps``).
"""
import itertools
import math

import numpy as np

from .harness import BASELINE, Case, optional_import

DECODE = [(32, 8, 128, 1024), (32, 8, 128, 4096), (12, 12, 64, 1024)]  # Hq, Hkv, D, Tk
PREFILL = [(12, 12, 64, 512), (32, 8, 128, 1024)]  # Hq, Hkv, D, T
FLOOR = "read-floor"
PROBE = "read_gbps"  # the machine's read bandwidth, probed in each decode case's rotation


def cases(quick: bool) -> list:
    from .bandwidth import _last_level_cache_bytes, read_probe

    torch = optional_import("torch")
    rng = np.random.default_rng(0)
    cache_bytes = _last_level_cache_bytes() or 32 << 20
    read_once, probe_bytes = read_probe()
    out = []
    for hq, hkv, d, tk in DECODE:
        kv_bytes = 2 * hkv * tk * d * 4
        copies = math.ceil(2 * cache_bytes / kv_bytes) + 1
        sets = [_qkv(rng, hq, hkv, 1, tk, d) for _ in range(copies)]
        params = {"Hq": hq, "Hkv": hkv, "D": d, "Tq": 1, "Tk": tk, "kv_bytes": kv_bytes, "cache_copies": copies,
                  "probe_bytes": probe_bytes}
        turn = itertools.cycle(range(copies)).__next__  # one rotation for all: no call finds another's copy warm
        c = _contenders(torch, sets, turn, numpy_too=True)
        c[FLOOR] = _floor(sets, turn)
        out.append(Case("attention", f"decode Hq{hq}/Hkv{hkv} D{d} Tk{tk}", c, params, probes={PROBE: read_once}))
    for hq, hkv, d, t in PREFILL:
        # the NumPy reference materializes [Hq, T, T] scores: seconds per call at T 1024
        numpy_too = not quick or t <= 512
        params = {"Hq": hq, "Hkv": hkv, "D": d, "Tq": t, "Tk": t, "causal": True}
        out.append(Case("attention", f"prefill Hq{hq}/Hkv{hkv} D{d} T{t}",
                        _contenders(torch, [_qkv(rng, hq, hkv, t, t, d)], lambda: 0, numpy_too), params))
    return out


def _qkv(rng, hq, hkv, tq, tk, d):
    """q, k, v, 64-byte aligned as a decoder allocates its KV cache (fastdecode.empty_aligned)."""
    from fastdecode import empty_aligned

    out = []
    for shape in ((1, hq, tq, d), (1, hkv, tk, d), (1, hkv, tk, d)):
        a = empty_aligned(shape)
        a[...] = rng.standard_normal(shape, dtype=np.float32)
        out.append(a)
    return tuple(out)


def _rotating(fn, sets, turn):
    """A zero-argument call of fn(q, k, v) on sets[turn()]."""
    return lambda: fn(*sets[turn()])


def _contenders(torch, sets, turn, numpy_too):
    import fastdecode
    from fastdecode import reference

    buf = np.empty_like(sets[0][0])

    def fastdecode_c(q, k, v):
        with fastdecode.use_backend("c"):
            return fastdecode.attention(q, k, v, out=buf)

    c = {BASELINE: _rotating(fastdecode_c, sets, turn)}
    if numpy_too:
        c["fastdecode-numpy"] = _rotating(lambda q, k, v: reference.attention.attention(q, k, v, True), sets, turn)
    if torch is not None:
        tsets = [tuple(torch.from_numpy(a) for a in s) for s in sets]
        sdpa = torch.nn.functional.scaled_dot_product_attention
        # Tq == Tk or Tq == 1: torch's top-left causal alignment is ours
        c["torch"] = _rotating(lambda q, k, v: sdpa(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True), tsets, turn)
    return c


def _floor(sets, turn):
    """Stream the same K and V bytes the kernels read, nothing else."""
    from fastdecode import _native

    flat = [(k.reshape(-1), v.reshape(-1)) for _, k, v in sets]

    def read_floor():
        k, v = flat[turn()]
        return _native.read_sum_f32(k) + _native.read_sum_f32(v)

    return read_floor


def notes(rows: list) -> list:
    """One line per decode row: the C kernel's KV-cache read rate against the
    machine's read bandwidth (the probe, timed in the same rotation) and
    against the interleaved floor; the figures are added to the row's params."""
    lines = []
    for row in rows:
        params, med = row["params"], row["median_s"]
        if row["kernel"] != "attention" or PROBE not in row.get("probe_s", {}):
            continue
        n = row["threads"]
        c_gbps = params["kv_bytes"] / med[BASELINE] / 1e9
        machine_gbps = params["probe_bytes"] / row["probe_s"][PROBE] / 1e9
        params.update(c_read_gbps=c_gbps, machine_read_gbps=machine_gbps)
        line = (f"attention {row['case']}, {n} thread(s): the C kernel reads the KV cache "
                f"({params['kv_bytes'] / 2**20:.0f} MiB, cold) at {c_gbps:.1f} GB/s = "
                f"{100 * c_gbps / machine_gbps:.0f}% of the machine's read bandwidth = {machine_gbps:.1f} GB/s "
                f"(read_gbps()'s {params['probe_bytes'] / 2**20:.0f} MiB read, timed in the same rotation)")
        if FLOOR in med:
            floor_gbps = params["kv_bytes"] / med[FLOOR] / 1e9
            params["floor_read_gbps"] = floor_gbps
            line += f"; {100 * c_gbps / floor_gbps:.0f}% of the interleaved read floor = {floor_gbps:.1f} GB/s"
        lines.append(line)
    return lines
