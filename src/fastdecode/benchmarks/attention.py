"""Attention contenders: fastdecode (C kernel, NumPy reference) and PyTorch's
scaled_dot_product_attention (``enable_gqa=True``), float32, one sequence.

Decode (Tq = 1, the whole cache visible) at Llama-3-8B's heads (Hq 32, Hkv 8,
D 128) and GPT-2's (12, 12, 64); causal prefill (Tq = Tk). After the table,
:func:`notes` reports the rate at which the C kernel reads the KV cache in
each decode case next to :func:`~fastdecode.benchmarks.bandwidth.read_gbps`
measured in the same run at the same thread count (also added to the JSON
params: ``c_read_gbps``, ``machine_read_gbps``).
"""
import numpy as np

from .harness import BASELINE, Case, optional_import

DECODE = [(32, 8, 128, 1024), (32, 8, 128, 4096), (12, 12, 64, 1024)]  # Hq, Hkv, D, Tk
PREFILL = [(12, 12, 64, 512), (32, 8, 128, 1024)]  # Hq, Hkv, D, T


def cases(quick: bool) -> list:
    torch = optional_import("torch")
    rng = np.random.default_rng(0)
    out = []
    for hq, hkv, d, tk in DECODE:
        q, k, v = _qkv(rng, hq, hkv, 1, tk, d)
        params = {"Hq": hq, "Hkv": hkv, "D": d, "Tq": 1, "Tk": tk, "kv_bytes": k.nbytes + v.nbytes}
        out.append(Case("attention", f"decode Hq{hq}/Hkv{hkv} D{d} Tk{tk}", _contenders(torch, q, k, v, True),
                        params))
    for hq, hkv, d, t in PREFILL:
        q, k, v = _qkv(rng, hq, hkv, t, t, d)
        # the NumPy reference materializes [Hq, T, T] scores: seconds per call at T 1024
        numpy_too = not quick or t <= 512
        params = {"Hq": hq, "Hkv": hkv, "D": d, "Tq": t, "Tk": t, "causal": True}
        out.append(Case("attention", f"prefill Hq{hq}/Hkv{hkv} D{d} T{t}",
                        _contenders(torch, q, k, v, numpy_too), params))
    return out


def _qkv(rng, hq, hkv, tq, tk, d):
    q = rng.standard_normal((1, hq, tq, d), dtype=np.float32)
    k = rng.standard_normal((1, hkv, tk, d), dtype=np.float32)
    v = rng.standard_normal((1, hkv, tk, d), dtype=np.float32)
    return q, k, v


def _contenders(torch, q, k, v, numpy_too):
    import fastdecode
    from fastdecode import reference

    buf = np.empty_like(q)

    def fastdecode_c():
        with fastdecode.use_backend("c"):
            return fastdecode.attention(q, k, v, out=buf)

    c = {BASELINE: fastdecode_c}
    if numpy_too:
        c["fastdecode-numpy"] = lambda: reference.attention.attention(q, k, v, True)
    if torch is not None:
        qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        # Tq == Tk or Tq == 1: torch's top-left causal alignment is ours
        c["torch"] = lambda: sdpa(qt, kt, vt, is_causal=q.shape[2] > 1, enable_gqa=True)
    return c


def notes(rows: list) -> list:
    """One line per decode row: the C kernel's KV-cache read rate against
    read_gbps() at the same thread count; both are added to the row's params."""
    from .bandwidth import read_gbps

    measured = {}
    lines = []
    for row in rows:
        params = row["params"]
        if row["kernel"] != "attention" or "kv_bytes" not in params:
            continue
        n = row["threads"]
        if n not in measured:
            measured[n] = read_gbps(threads=n)
        c_gbps = params["kv_bytes"] / row["median_s"][BASELINE] / 1e9
        params["c_read_gbps"], params["machine_read_gbps"] = c_gbps, measured[n]
        lines.append(f"attention {row['case']}, {n} thread(s): the C kernel reads the KV cache at "
                     f"{c_gbps:.1f} GB/s = {100 * c_gbps / measured[n]:.0f}% of read_gbps() = {measured[n]:.1f} GB/s "
                     f"(KV cache {params['kv_bytes'] / 2**20:.0f} MiB)")
    return lines
