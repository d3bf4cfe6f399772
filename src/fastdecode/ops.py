"""The public kernels: their signatures, documentation and the order of
their checks. Each validates its input once (helpers in
:mod:`fastdecode._validate`, sampling settings in
:mod:`fastdecode._sampling_args`), then calls the kernel of the active
backend (:mod:`fastdecode.backend`) with C-contiguous arrays and a
preallocated output. No backend validates again, and no C code runs on
input that has not passed through this module.

Conventions (NumPy's): float32 is the fast path, float64 is accepted and
kept; other dtypes raise TypeError. Non-contiguous input is copied once.
``out=`` must have the result's shape and dtype and is returned as is; it
may overlap the inputs, and the result is then as if the inputs had been
copied first.
"""
from __future__ import annotations

import math

import numpy as np

from . import _sampling_args as _args
from . import backend as _backend
from . import formats as _formats
from ._validate import (apart, bias_array, contiguous, copy_in, float_array, kernel_target, normalize_axis,
                        real_number, result_array)

__all__ = ["softmax", "log_softmax", "attention", "linear", "layer_norm", "rms_norm",
           "sample", "argmax", "process_logits", "apply_repetition_penalty"]


# ---------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------

def _softmax(x, axis, out, log: bool):
    x = float_array(x, "x")
    axis = normalize_axis(axis, x.ndim)
    result = result_array(out, x.shape, x.dtype)
    if x.size == 0:
        return result
    (x,) = apart(result, x, in_place=True)  # the row passes may run in place
    n = x.shape[axis]
    if axis == x.ndim - 1 and x.flags.c_contiguous and result.flags.c_contiguous:
        # the decode loop's case: no copies, no transposes
        _backend.active().softmax_rows(result if x.ndim == 2 else result.reshape(-1, n),
                                       x if x.ndim == 2 else x.reshape(-1, n), log)
        return result
    xt, rt = np.moveaxis(x, axis, -1), np.moveaxis(result, axis, -1)  # [..., n]
    x2 = contiguous(xt).reshape(-1, n)  # [rows, n], copied once if needed
    r2 = kernel_target(rt, x2.shape)
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
        scale = real_number(scale, "scale")
        if not math.isfinite(scale) or abs(scale) > float(np.finfo(q.dtype).max):
            raise ValueError(f"scale must be finite in {q.dtype}; got {scale}")
    lengths = _lengths(lengths, b, tk)
    result = result_array(out, q.shape, q.dtype)
    if result.size == 0:
        return result
    if tk == 0:
        result[...] = 0
        return result
    q, k, v = apart(result, contiguous(q), contiguous(k), contiguous(v))  # out's rows are written while they are read
    target = kernel_target(result, q.shape)
    _backend.active().attention(target, q, k, v, bool(causal), scale, lengths)
    return copy_in(result, target)


def _lengths(lengths, b: int, tk: int) -> np.ndarray:  # -> [B] int64, each in [0, Tk]
    if lengths is None:
        return np.full(b, tk, dtype=np.int64)
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
    return np.array(lengths, dtype=np.int64)  # a copy: the caller's array may share out's memory


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------

def linear(x, weight, bias=None, *, out=None):
    """``x @ weight.T + bias``, torch's ``F.linear``: x ``[..., in]``, weight
    ``[out, in]`` (torch's Linear layout), bias ``[out]`` or None; returns
    ``[..., out]``. One dtype for all (float32 or float64).

    Made for a decode step: a few rows of x (up to
    ``fastdecode._cbackend.LINEAR_C_ROWS``) against a large weight, which
    the C backend streams once through every thread; more rows (a prefill)
    go to NumPy's matmul. Pass a C-contiguous weight: any other layout is
    copied on every call.

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
    bias = bias_array(bias, n_out, x.dtype)
    shape = x.shape[:-1] + (n_out,)
    result = result_array(out, shape, x.dtype)
    if result.size == 0:
        return result
    x2 = contiguous(x).reshape(result.size // n_out, n_in)  # [N, in]
    x2, weight, bias = apart(result, x2, contiguous(weight), contiguous(bias))  # written while they are read
    target = kernel_target(result, (x2.shape[0], n_out))
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
    return contiguous(a)


def _norm(x, weight, bias, eps, out, rms: bool):
    x = float_array(x, "x", 1)
    weight = _norm_param(weight, "weight", x)
    bias = _norm_param(bias, "bias", x)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not 0 <= float(eps) < math.inf:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    result = result_array(out, x.shape, x.dtype)
    if result.size == 0:
        return result
    n = x.shape[-1]
    x2 = contiguous(x).reshape(-1, n)  # [rows, n]
    if weight is None:
        weight = np.ones(n, x.dtype)
    x2, weight, bias = apart(result, x2, weight, bias)
    target = kernel_target(result, x2.shape)
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
# Sampling (settings: fastdecode._sampling_args)
# ---------------------------------------------------------------------------

def _rows_output(out, x, one_row, *inputs):
    """(what the caller gets, the [B, V] C-contiguous array the kernel fills,
    x and inputs kept apart from it; the row kernels may run in place)."""
    result = result_array(out, x.shape[1:] if one_row else x.shape, x.dtype)
    x, *inputs = apart(result[None] if one_row else result, x, *inputs, in_place=True)
    return result, kernel_target(result, x.shape), x, inputs


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
    x, one_row, params, sampled, prev_ids, prev_offsets = _args.prepare(
        logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, do_sample)
    rows = x.shape[0]
    if sampled:
        _args.draw_u(params, rng)
    ids = np.empty(rows, np.int64)
    bad = _backend.active().sample_rows(ids, x, params, prev_ids, prev_offsets)
    if bad:
        if bad < 0:
            raise MemoryError("sample: could not allocate scratch memory")
        _args.raise_bad_row(ids, x, params, one_row)
    return int(ids[0]) if one_row else ids


def argmax(logits):
    """Greedy decoding: the index of each row's largest logit, the lowest
    id on a tie. int64 ``[B]`` for ``[B, V]`` logits, a Python int for
    ``[V]``. NaN, +inf and all ``-inf`` rows raise ValueError, as in
    :func:`sample` (``argmax(x) == sample(x, temperature=0)``)."""
    x, one_row = _args.logits_rows(logits)
    ids = np.empty(x.shape[0], np.int64)
    if _backend.active().argmax_rows(ids, x):
        _args.raise_bad_row(ids, x, np.zeros((x.shape[0], len(_args.SAMPLE_PARAMS))), one_row)
    return int(ids[0]) if one_row else ids


def process_logits(logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
                   prev_tokens=None, return_probs=False, out=None):
    """The logits after :func:`sample`'s pipeline (penalty, temperature,
    top-k, top-p, min-p; same settings and rules), without the draw:
    filtered tokens at ``-inf``; or, with ``return_probs=True``, the
    probabilities over the kept tokens, filtered tokens at 0. temperature 0
    keeps only the argmax. Same shape and dtype as ``logits``; ``out=``
    follows NumPy."""
    x, one_row, params, _, prev_ids, prev_offsets = _args.prepare(
        logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, None)
    result, target, x, (prev_ids,) = _rows_output(out, x, one_row, prev_ids)
    status = np.empty(x.shape[0], np.int64)
    bad = _backend.active().process_rows(target, status, x, params, prev_ids, prev_offsets, bool(return_probs))
    if bad:
        if bad < 0:
            raise MemoryError("process_logits: could not allocate scratch memory")
        _args.raise_bad_row(status, x, params, one_row)
    return copy_in(result, target)


def apply_repetition_penalty(logits, prev_tokens, penalty, *, out=None):
    """Hugging Face's repetition penalty: each distinct id in ``prev_tokens``
    (format as in :func:`sample`) has its logit multiplied by ``penalty``
    when negative, divided by it otherwise. ``penalty`` > 0, a scalar or one
    per row. Returns a new array, or ``out`` (which may be ``logits``)."""
    x, one_row = _args.logits_rows(logits)
    rows = x.shape[0]
    pen = _args.per_row(penalty, "penalty", rows)
    _args.check_range(pen, "penalty", lambda v: (v > 0) & (v <= _args.F32_MAX), "> 0 and finite")
    pen = pen if isinstance(pen, np.ndarray) else np.full(rows, float(pen))
    prev_ids, prev_offsets = _args.prev_tokens_layout(prev_tokens, rows, x.shape[1], one_row)
    result, target, x, (prev_ids,) = _rows_output(out, x, one_row, prev_ids)
    if _backend.active().repetition_penalty_rows(target, x, pen, prev_ids, prev_offsets) < 0:
        raise MemoryError("apply_repetition_penalty: could not allocate memory")
    return copy_in(result, target)
