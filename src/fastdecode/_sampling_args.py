"""Sampling arguments: the per-row settings array every sampling kernel
takes, the ``prev_tokens`` layout, the random draw's source, and the errors
the kernels report back.

Every sampling kernel takes logits ``[B, V]`` C-contiguous and one ``[B, 6]``
float64 array of per-row settings whose columns are :data:`SAMPLE_PARAMS`
(C's ``fd_sample_params``, in its field order), each at its neutral value
where a filter is off. ``prev_tokens`` becomes ids ``[n_prev]`` and offsets
``[B + 1]`` int64: row r's seen ids are ``ids[offsets[r]:offsets[r + 1]]``.
Finiteness is checked by the kernels' own max pass (a separate NumPy pass
would cost as much as the top-k kernel itself); a bad row comes back as a
negative code and :func:`raise_bad_row` names it.
"""
from __future__ import annotations

import operator

import numpy as np

from ._validate import float_array

# The per-row settings, in column order: the one definition of the layout
# (fastdecode.h's struct fd_sample_params has these fields in this order).
SAMPLE_PARAMS = ("temperature", "top_k", "top_p", "min_p", "penalty", "u")
TEMPERATURE, PENALTY, U = (SAMPLE_PARAMS.index(f) for f in ("temperature", "penalty", "u"))  # columns read here
F32_TINY = float(np.finfo(np.float32).tiny)
F32_MAX = float(np.finfo(np.float32).max)
_default_generator = None


_ARGS = ("temperature", "top_k", "top_p", "min_p", "penalty", "u")  # _columns' arguments, by name
_in_layout = operator.itemgetter(*(_ARGS.index(f) for f in SAMPLE_PARAMS))


def _columns(temperature, top_k, top_p, min_p, penalty, u=0.0) -> tuple:  # the settings in SAMPLE_PARAMS order
    return _in_layout((temperature, top_k, top_p, min_p, penalty, u))


def _params(rows, cols) -> np.ndarray:  # [rows, len(SAMPLE_PARAMS)] float64, one row repeated
    return np.array([cols]) if rows == 1 else np.tile(np.array(cols, np.float64), (rows, 1))


def logits_rows(logits, name="logits"):  # -> (logits as [B, V] C-contiguous, was it 1-D)
    x = float_array(logits, name, 1, 2)
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one token (a non-empty last axis); got shape {x.shape}")
    if x.shape[-1] > 2**31 - 1:
        raise ValueError(f"{name} has {x.shape[-1]} tokens; at most 2**31 - 1 are supported")
    one_row = x.ndim == 1
    x = x.reshape(1, -1) if one_row else x
    return (x if x.flags.c_contiguous else np.ascontiguousarray(x)), one_row


_SCALARS = (float, int)


def per_row(value, name, rows, integer=False):
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


def check_range(v, name, ok, rule):
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
    for anything else, which sampling_params then checks and reports."""
    if not (type(t) in _SCALARS and type(k) is int and type(p) in _SCALARS and type(mp) in _SCALARS
            and type(pen) in _SCALARS and do_sample in (None, True, False)):
        return None
    if not ((t == 0 or F32_TINY <= t <= F32_MAX) and k >= 0 and 0 < p <= 1 and 0 <= mp <= 1
            and 0 < pen <= F32_MAX) or (do_sample is True and t == 0):
        return None
    if do_sample is False:
        t = 0.0
    return _params(rows, _columns(t, min(k, 2**53), p, mp, pen)), pen != 1.0, t != 0.0


def sampling_params(rows, temperature, top_k, top_p, min_p, repetition_penalty, do_sample):
    """The [rows, len(SAMPLE_PARAMS)] settings array, validated. Returns (params, penalized, sampled)."""
    fast = _scalar_params(rows, temperature, 0 if top_k is None else top_k, 1.0 if top_p is None else top_p,
                          0.0 if min_p is None else min_p,
                          1.0 if repetition_penalty is None else repetition_penalty, do_sample)
    if fast is not None:
        return fast
    t = per_row(temperature, "temperature", rows)
    check_range(t, "temperature", lambda v: (v >= 0) & (v <= F32_MAX), ">= 0 and finite (0 means greedy)")
    check_range(t, "temperature", lambda v: (v == 0) | (v >= F32_TINY),
                f"0 (greedy) or at least {F32_TINY:.3g} (the smallest normal float32)")
    if do_sample is False:
        t = 0.0
    elif do_sample is True:
        check_range(t, "temperature", lambda v: v > 0,
                    "> 0 when do_sample=True (for greedy decoding use do_sample=False or temperature=0)")
    elif do_sample is not None:
        raise TypeError(f"do_sample must be True, False or None; got {type(do_sample).__name__}")
    k = 0 if top_k is None else per_row(top_k, "top_k", rows, integer=True)
    check_range(k, "top_k", lambda v: v >= 0, ">= 0 (0 or None: off)")
    k = np.minimum(k, 2**53) if isinstance(k, np.ndarray) else min(k, 2**53)  # exact in float64; k >= V keeps all
    p = 1.0 if top_p is None else per_row(top_p, "top_p", rows)
    check_range(p, "top_p", lambda v: (v > 0) & (v <= 1), "in (0, 1] (1 or None: off)")
    mp = 0.0 if min_p is None else per_row(min_p, "min_p", rows)
    check_range(mp, "min_p", lambda v: (v >= 0) & (v <= 1), "in [0, 1] (0 or None: off)")
    pen = 1.0 if repetition_penalty is None else per_row(repetition_penalty, "repetition_penalty", rows)
    check_range(pen, "repetition_penalty", lambda v: (v > 0) & (v <= F32_MAX), "> 0 and finite (1 or None: off)")
    cols = _columns(t, k, p, mp, pen)
    if any(isinstance(c, np.ndarray) for c in cols):
        params = np.empty((rows, len(SAMPLE_PARAMS)))
        for j, c in enumerate(cols):
            params[:, j] = c
        return params, bool(np.any(params[:, PENALTY] != 1.0)), bool(np.any(params[:, TEMPERATURE] != 0.0))
    return _params(rows, cols), pen != 1.0, t != 0.0


def generator(rng):
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


def draw_u(params: np.ndarray, rng) -> None:
    """Fill params[:, U] (``[rows, len(SAMPLE_PARAMS)]`` float64) with one
    uniform draw per row from ``rng`` (SPEC 7). One row draws a scalar, so a
    seed gives the same u whether or not it is batched with others' settings."""
    gen = generator(rng)
    if params.shape[0] == 1:
        params[0, U] = gen.random()
    else:
        params[:, U] = gen.random(params.shape[0])


def prev_tokens_layout(prev_tokens, rows, vocab, one_row):
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


def raise_bad_row(codes, x, params, one_row):
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
                     f"(temperature={params[r, TEMPERATURE]:g}); raise the temperature, or use 0 for greedy")


def prepare(logits, temperature, top_k, top_p, min_p, repetition_penalty, prev_tokens, do_sample):
    x, one_row = logits_rows(logits)
    rows, vocab = x.shape
    params, penalized, sampled = sampling_params(rows, temperature, top_k, top_p, min_p,
                                                  repetition_penalty, do_sample)
    prev_ids = prev_offsets = None
    if penalized:
        prev_ids, prev_offsets = prev_tokens_layout(prev_tokens, rows, vocab, one_row)
    return x, one_row, params, sampled, prev_ids, prev_offsets
