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
from . import formats as _formats

__all__ = ["softmax", "log_softmax", "attention", "linear",
           "sample", "argmax", "process_logits", "apply_repetition_penalty"]

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


def kernel_target(result: np.ndarray, shape: tuple, *inputs) -> np.ndarray:
    """The C-contiguous `shape` array a kernel writes: `result` itself (a view)
    when it is contiguous and overlaps none of `inputs` (which the kernel still
    reads while writing), else scratch that :func:`copy_in` copies over."""
    if result.flags.c_contiguous and not any(np.may_share_memory(result, a) for a in inputs if a is not None):
        return result.reshape(shape)
    return np.empty(shape, result.dtype)


def copy_in(result: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`result` once the kernel has written `target` (from :func:`kernel_target`)."""
    if not np.may_share_memory(result, target):  # scratch: copy it in
        result[...] = target.reshape(result.shape)
    return result


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
    r2 = kernel_target(rt, x2.shape)  # the row passes may run in place
    _backend.active().softmax_rows(r2, x2, log)
    copy_in(rt, r2)
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
        if not math.isfinite(scale) or abs(scale) > float(np.finfo(q.dtype).max):
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
    target = kernel_target(result, q.shape, q, k, v)  # rows of out are written while q, k, v are read
    _backend.active().attention(target, q, k, v, bool(causal), scale, lengths)
    return copy_in(result, target)


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------

def linear(x, weight, bias=None, *, out=None):
    """``x @ weight.T + bias``, torch's ``F.linear``: x ``[..., in]``, weight
    ``[out, in]`` (torch's Linear layout), bias ``[out]`` or None; returns
    ``[..., out]``. One dtype for all (float32 or float64).

    Made for a decode step: a few rows of x against a large weight, which
    the C backend streams once through every thread (up to 8 rows per
    pass); more rows (a prefill) go to NumPy's matmul. Pass a C-contiguous
    weight: any other layout is copied on every call.

    weight may be a :class:`fastdecode.QuantizedTensor` (q8_0, q4_0, q4_K,
    q6_K, bf16, f16): x and bias are then float32 (fastdecode.formats).
    """
    if isinstance(weight, _formats.QuantizedTensor):
        return _formats.linear(x, weight, bias, out)
    x = float_array(x, "x", 1)
    weight = float_array(weight, "weight", 2, 2)
    if x.dtype != weight.dtype:
        raise TypeError(f"x and weight must have one dtype; got {x.dtype} and {weight.dtype}")
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features (last axis) but weight takes {n_in} (shape {weight.shape})")
    if bias is not None:
        bias = float_array(bias, "bias", 1, 1)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have x's dtype {x.dtype}; got {bias.dtype}")
        if bias.shape != (n_out,):
            raise ValueError(f"bias must have shape ({n_out},) (weight's rows); got {bias.shape}")
        bias = np.ascontiguousarray(bias)
    shape = x.shape[:-1] + (n_out,)
    result = np.empty(shape, x.dtype) if out is None else check_out(out, shape, x.dtype)
    if result.size == 0:
        return result
    x2 = np.ascontiguousarray(x).reshape(result.size // n_out, n_in)  # [N, in]
    weight = np.ascontiguousarray(weight)
    target = kernel_target(result, (x2.shape[0], n_out), x2, weight, bias)  # written while they are read
    _backend.active().linear(target, x2, weight, bias)
    return copy_in(result, target)


# ---------------------------------------------------------------------------
# LayerNorm and RMSNorm
# ---------------------------------------------------------------------------

def _norm_param(a, name: str, x: np.ndarray):  # weight or bias: None, or [n] in x's dtype
    if a is None:
        return None
    a = float_array(a, name, 1, 1)
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype {x.dtype}; got {a.dtype}")
    if a.shape[0] != x.shape[-1]:
        raise ValueError(f"{name} must have shape ({x.shape[-1]},) (x's last axis); got {a.shape}")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _norm(x, weight, bias, eps, out, rms: bool):
    x = float_array(x, "x", 1)
    weight = _norm_param(weight, "weight", x)
    bias = _norm_param(bias, "bias", x)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not 0 <= float(eps) < math.inf:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    result = np.empty(x.shape, x.dtype) if out is None else check_out(out, x.shape, x.dtype)
    if result.size == 0:
        return result
    n = x.shape[-1]
    x2 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(-1, n)  # [rows, n]
    if weight is None:
        weight = np.ones(n, x.dtype)
    target = kernel_target(result, x2.shape, x2, weight, bias)  # written while they are read
    _backend.active().norm_rows(target, x2, weight, bias, float(eps), rms)
    return copy_in(result, target)


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, out=None):
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``
    (torch's ``F.layer_norm`` with ``normalized_shape = x.shape[-1:]``).
    weight and bias: ``[n]`` or None. Statistics in double in C, in x's dtype
    in the NumPy reference."""
    return _norm(x, weight, bias, eps, out, False)


def rms_norm(x, weight=None, eps=1e-6, *, out=None):
    """RMSNorm over the last axis: ``x / sqrt(mean(x**2) + eps) * weight``
    (Llama's; torch's ``F.rms_norm``). weight: ``[n]`` or None."""
    return _norm(x, weight, None, eps, out, True)


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------
# Every sampling kernel takes logits [B, V] (or [V]) and one [B, 6] float64
# array of per-row settings (reference.SAMPLE_PARAMS: temperature, top_k,
# top_p, min_p, penalty, u), each at its neutral value where a filter is off.
# Finiteness is checked by the kernels' own max pass (a separate NumPy pass
# would cost as much as the top-k kernel itself); a bad row comes back as a
# negative code and is raised here, naming the argument, before anything is
# returned.

_TEMPERATURE, _TOP_K, _TOP_P, _MIN_P, _PENALTY, _U = range(6)
_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)
_default_generator = None


def _logits_rows(logits, name="logits"):  # -> (logits as [B, V] C-contiguous, was it 1-D)
    x = float_array(logits, name, 1, 2)
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one token (a non-empty last axis); got shape {x.shape}")
    if x.shape[-1] > 2**31 - 1:
        raise ValueError(f"{name} has {x.shape[-1]} tokens; at most 2**31 - 1 are supported")
    one_row = x.ndim == 1
    x = x.reshape(1, -1) if one_row else x
    return (x if x.flags.c_contiguous else np.ascontiguousarray(x)), one_row


_SCALARS = (float, int)


def _per_row(value, name, rows, integer=False):
    """A Python scalar, or an int64/float64 array of one value per row."""
    if type(value) in _SCALARS and not (integer and type(value) is float):
        return value
    if np.ndim(value) == 0:
        if isinstance(value, np.ndarray):
            value = value.item()
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            return operator.index(value) if integer else float(value)
        except (TypeError, ValueError):
            what = "an integer" if integer else "a real number"
            raise TypeError(f"{name} must be {what} or one per row; got {type(value).__name__}") from None
    a = np.asarray(value)
    if a.dtype.kind not in ("iu" if integer else "iuf"):
        what = "integers" if integer else "real numbers"
        raise TypeError(f"{name} must be {what}, a scalar or one per row; got dtype {a.dtype}")
    if a.shape != (rows,):
        raise ValueError(f"{name} must be a scalar or have one value per row, shape ({rows},); got shape {a.shape}")
    return a.astype(np.int64 if integer else np.float64)


def _check_range(v, name, ok, rule):
    """ok(v) must hold for the scalar v, or everywhere in the array v; NaN fails."""
    if isinstance(v, np.ndarray):
        good = ok(v)
        if not good.all():
            raise ValueError(f"{name} must be {rule}; got {v[~good][0]}")
    elif not ok(v):
        raise ValueError(f"{name} must be {rule}; got {v}")


def _scalar_params(rows, t, k, p, mp, pen, do_sample):
    """The common case, Python scalars that pass every check below, in a
    fraction of its time (a decode loop calls this once per token); None
    for anything else, which _sampling_params then checks and reports."""
    if not (type(t) in _SCALARS and type(k) is int and type(p) in _SCALARS and type(mp) in _SCALARS
            and type(pen) in _SCALARS and do_sample in (None, True, False)):
        return None
    if not ((t == 0 or _F32_TINY <= t <= _F32_MAX) and k >= 0 and 0 < p <= 1 and 0 <= mp <= 1
            and 0 < pen <= _F32_MAX) or (do_sample is True and t == 0):
        return None
    if do_sample is False:
        t = 0.0
    row = (t, min(k, 2**53), p, mp, pen, 0.0)
    params = np.array([row]) if rows == 1 else np.tile(np.array(row, np.float64), (rows, 1))
    return params, pen != 1.0, t != 0.0


def _sampling_params(rows, temperature, top_k, top_p, min_p, repetition_penalty, do_sample):
    """The [rows, 6] settings array, validated. Returns (params, penalized, sampled)."""
    fast = _scalar_params(rows, temperature, 0 if top_k is None else top_k, 1.0 if top_p is None else top_p,
                          0.0 if min_p is None else min_p,
                          1.0 if repetition_penalty is None else repetition_penalty, do_sample)
    if fast is not None:
        return fast
    t = _per_row(temperature, "temperature", rows)
    _check_range(t, "temperature", lambda v: (v >= 0) & (v <= _F32_MAX), ">= 0 and finite (0 means greedy)")
    _check_range(t, "temperature", lambda v: (v == 0) | (v >= _F32_TINY),
                 f"0 (greedy) or at least {_F32_TINY:.3g} (the smallest normal float32)")
    if do_sample is False:
        t = 0.0
    elif do_sample is True:
        _check_range(t, "temperature", lambda v: v > 0,
                     "> 0 when do_sample=True (for greedy decoding use do_sample=False or temperature=0)")
    elif do_sample is not None:
        raise TypeError(f"do_sample must be True, False or None; got {type(do_sample).__name__}")
    k = 0 if top_k is None else _per_row(top_k, "top_k", rows, integer=True)
    _check_range(k, "top_k", lambda v: v >= 0, ">= 0 (0 or None: off)")
    k = np.minimum(k, 2**53) if isinstance(k, np.ndarray) else min(k, 2**53)  # exact in float64; k >= V keeps all
    p = 1.0 if top_p is None else _per_row(top_p, "top_p", rows)
    _check_range(p, "top_p", lambda v: (v > 0) & (v <= 1), "in (0, 1] (1 or None: off)")
    mp = 0.0 if min_p is None else _per_row(min_p, "min_p", rows)
    _check_range(mp, "min_p", lambda v: (v >= 0) & (v <= 1), "in [0, 1] (0 or None: off)")
    pen = 1.0 if repetition_penalty is None else _per_row(repetition_penalty, "repetition_penalty", rows)
    _check_range(pen, "repetition_penalty", lambda v: (v > 0) & (v <= _F32_MAX), "> 0 and finite (1 or None: off)")
    cols = (t, k, p, mp, pen, 0.0)
    if any(isinstance(c, np.ndarray) for c in cols):
        params = np.empty((rows, 6))
        for j, c in enumerate(cols):
            params[:, j] = c
        return params, bool(np.any(params[:, _PENALTY] != 1.0)), bool(np.any(params[:, _TEMPERATURE] != 0.0))
    params = np.array([cols]) if rows == 1 else np.tile(np.array(cols, np.float64), (rows, 1))
    return params, pen != 1.0, t != 0.0


def _generator(rng):
    """SPEC 7: None, a seed or a numpy.random.Generator. None uses one
    process-wide Generator seeded from the OS once (a fresh one per call
    would cost more than the draw)."""
    global _default_generator
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        if _default_generator is None:
            _default_generator = np.random.default_rng()
        return _default_generator
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rng must be None, a seed or a numpy.random.Generator; {exc}") from None


def _prev_tokens(prev_tokens, rows, vocab, one_row):
    """prev_tokens as (ids [n_prev] int64, offsets [rows + 1] int64)."""
    if prev_tokens is None:
        raise ValueError("prev_tokens is required when repetition_penalty is set (the ids seen so far)")
    if isinstance(prev_tokens, np.ndarray) and prev_tokens.ndim == 2:
        if prev_tokens.shape[0] != rows:
            raise ValueError(f"prev_tokens has {prev_tokens.shape[0]} rows but logits has {rows}")
        seqs = None
        ids = prev_tokens
    elif one_row:
        seqs = [prev_tokens]
    else:
        if isinstance(prev_tokens, np.ndarray) or not hasattr(prev_tokens, "__len__"):
            raise ValueError(f"prev_tokens must be a 2-D int array [B, T] or a sequence of B id sequences "
                             f"for logits of {rows} rows; got {type(prev_tokens).__name__}")
        if len(prev_tokens) != rows:
            raise ValueError(f"prev_tokens has {len(prev_tokens)} rows but logits has {rows}")
        seqs = prev_tokens
    if seqs is not None:
        try:
            arrays = [np.asarray(s) for s in seqs]
        except (ValueError, TypeError) as exc:  # ragged where one row was meant, objects, ...
            raise TypeError(f"prev_tokens rows must be 1-D sequences of integer token ids; {exc}") from None
        for a in arrays:
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise TypeError(f"prev_tokens rows must be 1-D sequences of integer token ids; got {a.dtype} {a.shape}")
        lengths = [a.size for a in arrays]
        ids = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
        offsets = np.zeros(rows + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
    else:
        if ids.dtype.kind not in "iu":
            raise TypeError(f"prev_tokens must hold integer token ids; got dtype {ids.dtype}")
        offsets = np.arange(rows + 1, dtype=np.int64) * ids.shape[1]
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"prev_tokens must be token ids in [0, {vocab}); got {ids.min()}..{ids.max()}")
    return ids, offsets


def _raise_bad_row(codes, x, params, one_row):
    """The first bad row's code (< 0) as a ValueError naming the argument."""
    r = int(np.flatnonzero(codes < 0)[0])
    where = "logits" if one_row else f"logits row {r}"
    code = int(codes[r])
    if code == -1:
        raise ValueError(f"{where} contains NaN")
    if code == -3 and np.isneginf(x[r]).all():
        raise ValueError(f"{where} is all -inf: no token can be sampled")
    if code == -2 and np.isposinf(x[r]).any():
        raise ValueError(f"{where} contains +inf")
    raise ValueError(f"{where} overflows float32 after the repetition penalty and temperature "
                     f"(temperature={params[r, _TEMPERATURE]:g}); raise the temperature, or use 0 for greedy")


def _rows_output(out, x, one_row):  # -> (what the caller gets, the [B, V] C-contiguous array the kernel fills)
    shape = x.shape[1:] if one_row else x.shape
    result = np.empty(shape, x.dtype) if out is None else check_out(out, shape, x.dtype)
    return result, kernel_target(result, x.shape)  # the sampling kernels may run in place


def _prepare(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, do_sample):
    x, one_row = _logits_rows(logits)
    rows, vocab = x.shape
    params, penalized, sampled = _sampling_params(rows, temperature, top_k, top_p, min_p,
                                                  repetition_penalty, do_sample)
    prev_ids = prev_offsets = None
    if penalized:
        prev_ids, prev_offsets = _prev_tokens(prev_tokens, rows, vocab, one_row)
    return x, one_row, params, sampled, prev_ids, prev_offsets


def sample(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
           prev_tokens=None, do_sample=None, rng=None):
    """Draw one token per row, in Hugging Face's order and with its rules:
    repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.

    logits: ``[B, V]`` or ``[V]`` float32 (fast path) or float64; finite or
    ``-inf`` (masked). Returns int64 ``[B]``, or a Python int for ``[V]``.
    Every setting is a scalar or an array of one value per row.

    - ``temperature``: logits are divided by it. ``0`` means greedy (the
      argmax of the penalized logits; the lowest id wins a tie).
    - ``top_k``: keep every token whose logit is >= the k-th largest (ties
      kept). ``None`` or ``0``: off; ``k >= V`` keeps everything.
    - ``top_p``: keep token i iff the probability mass of the tokens ranked
      strictly above it is < top_p (rank: probability descending, then id
      ascending), so the boundary token is kept. In (0, 1]; ``None`` or
      ``1.0``: off.
    - ``min_p``: keep tokens with p >= min_p * p_max. In [0, 1]; ``None`` or
      ``0``: off.
    - ``repetition_penalty`` (> 0; ``None`` or ``1.0``: off) with
      ``prev_tokens``, the ids seen so far including the prompt: each
      distinct seen id's logit is multiplied by the penalty when negative,
      divided by it otherwise. ``prev_tokens`` is a 1-D sequence of ids for
      ``[V]`` logits; for ``[B, V]``, a 2-D int array ``[B, T]`` or a
      sequence of B id sequences (ragged rows allowed). Ids lie in [0, V).
    - ``do_sample``: ``None`` (default) samples, except rows with
      temperature 0; ``False`` is greedy for every row (filters ignored);
      ``True`` samples and requires temperature > 0 (Hugging Face's rule).
    - ``rng``: ``None``, a seed or a ``numpy.random.Generator`` (SPEC 7).
      One uniform u in [0, 1) is drawn per row (in row order), and the
      token is the first, in token-id order, whose cumulative kept
      probability exceeds u; both backends pick the same token for the
      same u. A seed gives the same u on every call: pass a Generator in a
      decode loop.

    Raises ValueError for NaN or +inf logits, a row that is all ``-inf``,
    settings out of range, bad ``prev_tokens``, or mismatched batch sizes.
    """
    x, one_row, params, sampled, prev_ids, prev_offsets = _prepare(
        logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, do_sample)
    rows = x.shape[0]
    if sampled:
        gen = _generator(rng)
        if rows == 1:
            params[0, _U] = gen.random()
        else:
            params[:, _U] = gen.random(rows)
    ids = np.empty(rows, np.int64)
    bad = _backend.active().sample_rows(ids, x, params, prev_ids, prev_offsets)
    if bad:
        if bad < 0:
            raise MemoryError("sample: could not allocate scratch memory")
        _raise_bad_row(ids, x, params, one_row)
    return int(ids[0]) if one_row else ids


def argmax(logits):
    """Greedy decoding: the index of each row's largest logit, the lowest
    id on a tie. int64 ``[B]`` for ``[B, V]`` logits, a Python int for
    ``[V]``. NaN, +inf and all ``-inf`` rows raise ValueError, as in
    :func:`sample` (``argmax(x) == sample(x, temperature=0)``)."""
    x, one_row = _logits_rows(logits)
    ids = np.empty(x.shape[0], np.int64)
    if _backend.active().argmax_rows(ids, x):
        _raise_bad_row(ids, x, np.zeros((x.shape[0], 6)), one_row)
    return int(ids[0]) if one_row else ids


def process_logits(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
                   prev_tokens=None, return_probs=False, out=None):
    """The logits after :func:`sample`'s pipeline (penalty, temperature,
    top-k, top-p, min-p; same settings and rules), without the draw:
    filtered tokens at ``-inf``; or, with ``return_probs=True``, the
    probabilities over the kept tokens, filtered tokens at 0. temperature 0
    keeps only the argmax. Same shape and dtype as ``logits``; ``out=``
    follows NumPy."""
    x, one_row, params, _, prev_ids, prev_offsets = _prepare(
        logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, None)
    result, target = _rows_output(out, x, one_row)
    status = np.empty(x.shape[0], np.int64)
    bad = _backend.active().process_rows(target, status, x, params, prev_ids, prev_offsets, bool(return_probs))
    if bad:
        if bad < 0:
            raise MemoryError("process_logits: could not allocate scratch memory")
        _raise_bad_row(status, x, params, one_row)
    return copy_in(result, target)


def apply_repetition_penalty(logits, prev_tokens, penalty, *, out=None):
    """Hugging Face's repetition penalty: each distinct id in ``prev_tokens``
    (format as in :func:`sample`) has its logit multiplied by ``penalty``
    when negative, divided by it otherwise. ``penalty`` > 0, a scalar or one
    per row. Returns a new array, or ``out`` (which may be ``logits``)."""
    x, one_row = _logits_rows(logits)
    rows = x.shape[0]
    pen = _per_row(penalty, "penalty", rows)
    _check_range(pen, "penalty", lambda v: (v > 0) & (v <= _F32_MAX), "> 0 and finite")
    pen = pen if isinstance(pen, np.ndarray) else np.full(rows, float(pen))
    prev_ids, prev_offsets = _prev_tokens(prev_tokens, rows, x.shape[1], one_row)
    result, target = _rows_output(out, x, one_row)
    if _backend.active().repetition_penalty_rows(target, x, pen, prev_ids, prev_offsets) < 0:
        raise MemoryError("apply_repetition_penalty: could not allocate memory")
    return copy_in(result, target)
