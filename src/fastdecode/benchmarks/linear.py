"""Linear (x @ W.T + b) at decode shapes: fastdecode's C kernel against NumPy
(both weight orientations) and torch.nn.functional.linear; and the weight
formats (fastdecode.formats) at GPT-2's and Llama-125M's projection shapes
against float32 (fd.linear, NumPy's BLAS) and PyTorch's weight-only kernels
(``_weight_int8pack_mm``: int8 weights, a float scale per output row;
``_weight_int4pack_mm_for_cpu``: 4-bit, groups of 32), each with a probe of
read_gbps()'s read in the same rotation: :func:`notes` sets each format's
read rate of its packed bytes against it.

A decode step reads each weight from memory, not from cache (a model's
weights dwarf the last-level cache), so every contender cycles through
enough copies of the weight (at least STREAM_BYTES) that each call streams
its weight from DRAM, as in a real decode.
"""
import itertools

import numpy as np

from .harness import Case, optional_import

# (rows, in, out): GPT-2-124M's projections and head, a Llama MLP, small batches
SHAPES = [(1, 768, 2304), (1, 768, 768), (1, 3072, 768), (1, 768, 50257), (1, 2048, 768), (4, 768, 3072)]
QUICK = [(1, 768, 2304), (1, 3072, 768), (1, 768, 50257)]
STREAM_BYTES = 96 << 20  # several times any last-level cache we run on


def cases(quick: bool) -> list:
    return float_cases(quick) + format_cases(quick)


def float_cases(quick: bool) -> list:
    torch = optional_import("torch")
    out = []
    for rows, n_in, n_out in QUICK if quick else SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((rows, n_in), dtype=np.float32)
        copies = max(1, -(-STREAM_BYTES // (4 * n_in * n_out)))
        ws = [rng.standard_normal((n_out, n_in), dtype=np.float32) for _ in range(copies)]  # [out, in]
        ws_io = [np.ascontiguousarray(w.T) for w in ws]  # [in, out]
        b = rng.standard_normal(n_out, dtype=np.float32)
        buf = np.empty((rows, n_out), np.float32)
        c = {
            "fastdecode-c": _cycling(ws, lambda w, x=x, b=b, buf=buf: _with("c", x, w, b, buf)),
            "numpy x@W.T": _cycling(ws, lambda w, x=x, b=b, buf=buf: np.add(np.matmul(x, w.T, out=buf), b, out=buf)),
            "numpy x@W[in,out]": _cycling(ws_io, lambda w, x=x, b=b, buf=buf: np.add(np.matmul(x, w, out=buf), b,
                                                                                    out=buf)),
        }
        if torch is not None:
            xt, bt = torch.from_numpy(x), torch.from_numpy(b)
            c["torch"] = _cycling([torch.from_numpy(w) for w in ws],
                                  lambda wt, xt=xt, bt=bt: torch.nn.functional.linear(xt, wt, bt))
        mib = 4 * n_in * n_out / 2**20
        out.append(Case("linear", f"[{rows}, {n_in}] x [{n_out}, {n_in}] ({mib:.0f} MiB, from DRAM)", c,
                        {"rows": rows, "in": n_in, "out": n_out}))
    return out


def _cycling(weights, fn):
    """A zero-argument contender calling fn on the next weight copy each time."""
    it = itertools.cycle(weights)
    return lambda: fn(next(it))


def _with(backend, x, w, b, buf):
    import fastdecode

    with fastdecode.use_backend(backend):
        return fastdecode.linear(x, w, b, out=buf)


# ---------------------------------------------------------------------------
# Weight formats
# ---------------------------------------------------------------------------

# (in, out): GPT-2-124M's QKV, MLP up and down; Llama-125M's fused gate+up and down
FORMAT_SHAPES = [(768, 2304), (768, 3072), (3072, 768), (768, 4096), (2048, 768)]
FORMAT_QUICK = [(768, 3072), (2048, 768)]
FORMATS = ("q8_0", "q4_0", "q4_K", "q6_K", "bf16", "f16")
PROBE = "read_gbps"


def _copies(nbytes: int) -> int:
    return max(2, -(-STREAM_BYTES // nbytes))


def format_cases(quick: bool) -> list:
    import fastdecode as fd
    from fastdecode import empty_aligned

    from ..model.quantize import repack_tensor
    from .bandwidth import read_probe

    torch = optional_import("torch")
    read_once, probe_bytes = read_probe()
    out = []
    for n_in, n_out in FORMAT_QUICK if quick else FORMAT_SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, n_in), dtype=np.float32)
        w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02)
        buf = np.empty((1, n_out), np.float32)
        ws, ws_np = ([w.copy() for _ in range(_copies(w.nbytes))] for _ in range(2))  # own copies: never
        c = {"fastdecode-c float32": _cycling(ws, lambda w, x=x, buf=buf: _with("c", x, w, None, buf)),  # the
             "numpy float32": _cycling(ws_np, lambda w, x=x, buf=buf: np.matmul(x, w.T, out=buf))}  # other's L3
        params = {"rows": 1, "in": n_in, "out": n_out, "probe_bytes": probe_bytes, "bytes": {"float32": w.nbytes}}
        for fmt in FORMATS:
            qt = fd.quantize(w, fmt)
            copies = []
            for _ in range(_copies(qt.nbytes)):  # aligned, as fd.load places them
                data = empty_aligned(qt.data.shape, np.uint8)
                data[...] = qt.data
                copies.append(repack_tensor(fd.QuantizedTensor(fmt, qt.shape, data)))  # as fd.load lays it out
            c[f"fastdecode-c {fmt}"] = _cycling(copies, lambda q, x=x, buf=buf: _with("c", x, q, None, buf))
            params["bytes"][fmt] = qt.nbytes
        if torch is not None:
            xt = torch.from_numpy(x)
            if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
                q8 = fd.quantize(w, "q8_0")  # same int8 codes; torch takes one scale per row
                codes = torch.from_numpy(q8.data.reshape(n_out, -1, 34)[:, :, 2:].copy().view(np.int8).reshape(n_out, n_in))
                scale = torch.from_numpy(np.abs(w).max(axis=1) / 127)
                c["torch int8 weight-only"] = _cycling([(codes.clone(), scale) for _ in range(_copies(n_out * n_in))],
                                                       lambda a, xt=xt: torch.ops.aten._weight_int8pack_mm(xt, *a))
                params["bytes"]["torch int8"] = n_out * n_in + 4 * n_out
            if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
                nib = torch.from_numpy(rng.integers(0, 16, (n_out, n_in), dtype=np.int32))
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nib, 1)
                sz = torch.rand(n_in // 32, n_out, 2)
                c["torch int4 weight-only"] = _cycling(
                    [(packed.clone(), sz) for _ in range(_copies(n_out * n_in // 2))],
                    lambda a, xt=xt: torch.ops.aten._weight_int4pack_mm_for_cpu(xt, a[0], 32, a[1]))
                params["bytes"]["torch int4"] = n_out * n_in // 2 + sz.numel() * 4
        out.append(Case("linear-formats", f"[1, {n_in}] x [{n_out}, {n_in}]", c, params,
                        baseline="fastdecode-c float32", probes={PROBE: read_once}))
    return out


def notes(rows: list) -> list:
    """Per format row: each format's read rate of its packed bytes against the
    probe's bandwidth (read_gbps()'s read, timed in the same rotation)."""
    lines = []
    for row in rows:
        if row["kernel"] != "linear-formats" or PROBE not in row.get("probe_s", {}):
            continue
        params, med = row["params"], row["median_s"]
        machine = params["probe_bytes"] / row["probe_s"][PROBE] / 1e9
        rates = {}
        for name, s in med.items():
            key = name.split(" ", 1)[1] if name.startswith(("fastdecode-c ", "numpy ")) else None
            key = {"torch int8 weight-only": "torch int8", "torch int4 weight-only": "torch int4"}.get(name, key)
            if key in params["bytes"]:
                rates[name] = params["bytes"][key] / s / 1e9
        params.update(read_gbps=rates, machine_read_gbps=machine)
        lines.append(f"linear-formats {row['case']}, {row['threads']} thread(s), machine {machine:.1f} GB/s: " +
                     ", ".join(f"{k} {v:.1f} GB/s ({100 * v / machine:.0f}%)" for k, v in rates.items()))
    return lines
