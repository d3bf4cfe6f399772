"""Linear (x @ W.T + b) at decode shapes: fastdecode's C kernel against NumPy
(both weight orientations) and torch.nn.functional.linear.

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
