"""The public kernels. Each validates its input once, here, then calls the
kernel of the active backend (see fastdecode.backend) with C-contiguous
arrays and a preallocated output. No backend validates again, and no C code
runs on input that has not passed through this module.

Conventions (NumPy's): float32 is the fast path, float64 is accepted and
kept; other dtypes raise TypeError. Non-contiguous input is copied once.
``out=`` must have the result's shape and dtype and is returned as is.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import backend as _backend

__all__ = ["softmax", "log_softmax", "attention"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------
# Validation helpers (shared by every kernel)
# ---------------------------------------------------------------------------

def float_array(x, name: str, min_ndim: int = 1, max_ndim: int | None = None) -> np.ndarray:
    """x as an ndarray of float32 or float64, without copying when it already is one."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of float32 or float64; {exc}") from None
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64; got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s); got a {x.ndim}-d array")
    if max_ndim is not None and x.ndim > max_ndim:
        raise ValueError(f"{name} must have at most {max_ndim} dimensions; got shape {x.shape}")
    return x


def check_out(out, shape: tuple, dtype: np.dtype, name: str = "out") -> np.ndarray:
    """out must be a writeable ndarray of exactly this shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray; got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}; got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int; got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def _writable_target(target: np.ndarray, shape: tuple):
    """target reshaped to `shape` when that is a view; else None."""
    if target.flags.c_contiguous:
        return target.reshape(shape)
    return None


# ---------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------

def _softmax(x, axis, out, log: bool):
    x = float_array(x, "x")
    axis = normalize_axis(axis, x.ndim)
    result = np.empty(x.shape, x.dtype) if out is None else check_out(out, x.shape, x.dtype)
    if x.size == 0:
        return result
    n = x.shape[axis]
    if axis == x.ndim - 1 and x.flags.c_contiguous and result.flags.c_contiguous:
        # the decode-loop case: no copies, no transposes
        x2 = x if x.ndim == 2 else x.reshape(-1, n)  # [rows, n]
        _backend.active().softmax_rows(result if x.ndim == 2 else result.reshape(x2.shape), x2, log)
        return result
    xt = np.moveaxis(x, axis, -1)  # [..., n]
    rt = np.moveaxis(result, axis, -1)  # [..., n]
    x2 = np.ascontiguousarray(xt).reshape(-1, n)  # [rows, n], copied once if needed
    r2 = _writable_target(rt, x2.shape)
    if r2 is None:  # out is strided: compute, then copy in
        r2 = np.empty(x2.shape, x.dtype)
        _backend.active().softmax_rows(r2, x2, log)
        rt[...] = r2.reshape(rt.shape)
    else:
        _backend.active().softmax_rows(r2, x2, log)
    return result


def softmax(x, axis=-1, *, out=None):
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    float32 or float64; row sums are accumulated in double. ``-inf`` entries
    give 0. A row (the 1-D slice along ``axis``) containing NaN or ``+inf``,
    or made only of ``-inf``, gives NaN everywhere, as NumPy and SciPy do.
    """
    return _softmax(x, axis, out, False)


def log_softmax(x, axis=-1, *, out=None):
    """``log(softmax(x))`` along ``axis``, computed as ``(x - max) - log(sum(exp(x - max)))``
    so it stays finite where softmax underflows. ``-inf`` entries stay ``-inf``;
    undefined rows give NaN, as in :func:`softmax`."""
    return _softmax(x, axis, out, True)


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------

def attention(q, k, v, *, causal=True, scale=None, lengths=None, out=None):
    """Scaled dot-product attention with grouped-query heads and a KV cache.

    q: ``[B, Hq, Tq, D]``; k, v: ``[B, Hkv, Tk, D]`` with ``Hq % Hkv == 0``.
    The queries are the last Tq positions of each row's keys, so one call
    serves prefill (Tq == Tk), chunked prefill and decode (Tq == 1).
    ``lengths`` ([B] ints, each in ``[0, Tk]``) says how many cached
    positions of each row are filled, so a preallocated cache can be passed
    whole; the queries are then positions ``lengths[b] - Tq ...
    lengths[b] - 1``. A query with no visible key gets zeros.
    ``scale`` defaults to ``1/sqrt(D)``. Returns ``[B, Hq, Tq, D]``.

    A query whose visible scores hold NaN or ``+inf`` (overflowing inputs),
    or are all ``-inf``, gets NaN, as the textbook softmax gives. ``out``
    may overlap the inputs (the result is then computed aside and copied in).
    """
    q = float_array(q, "q", 4, 4)
    k = float_array(k, "k", 4, 4)
    v = float_array(v, "v", 4, 4)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    b, hq, tq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
    kb, hkv, tk, kd = k.shape
    if kb != b:
        raise ValueError(f"k has batch {kb} but q has batch {b}")
    if kd != d:
        raise ValueError(f"k has head size {kd} but q has head size {d}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k's heads ({hkv})")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool; got {type(causal).__name__}")
    if tq > tk and lengths is None:
        raise ValueError(f"q has {tq} positions but k only {tk}; queries are the last positions of the keys")
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    else:
        try:
            if isinstance(scale, (str, bytes)):  # float("0.5") parses; a scale is a number
                raise TypeError
            scale = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a real number; got {type(scale).__name__}") from None
        if not np.isfinite(scale) or abs(scale) > np.finfo(q.dtype).max:
            raise ValueError(f"scale must be finite in {q.dtype}; got {scale}")
    if lengths is None:
        lengths = np.full(b, tk, dtype=np.int64)
    else:
        try:
            lengths = np.asarray(lengths)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"lengths must be {b} integers (one per batch row); {exc}") from None
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must have an integer dtype; got {lengths.dtype}")
        if lengths.shape != (b,):
            raise ValueError(f"lengths must have shape ({b},) (one per batch row); got {lengths.shape}")
        if lengths.size and (lengths.min() < 0 or lengths.max() > tk):
            raise ValueError(f"lengths must lie in [0, {tk}] (the keys' length); got {lengths.min()}..{lengths.max()}")
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    result = np.empty(q.shape, q.dtype) if out is None else check_out(out, q.shape, q.dtype)
    if result.size == 0:
        return result
    if tk == 0:
        result[...] = 0
        return result
    q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
    # the kernels write rows of out while still reading q, k and v
    aside = (not result.flags.c_contiguous or np.may_share_memory(result, q) or np.may_share_memory(result, k)
             or np.may_share_memory(result, v))
    target = np.empty(q.shape, q.dtype) if aside else result
    _backend.active().attention(target, q, k, v, bool(causal), scale, lengths)
    if target is not result:
        result[...] = target
    return result
