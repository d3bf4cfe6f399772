"""The pure-NumPy backend: the readable definition of every kernel.

``backend`` adapts these functions to the calling convention that
fastdecode.ops uses for every backend: inputs validated and C-contiguous,
outputs preallocated and passed first.
"""
import types

import numpy as np

from . import attention, linear, norm, quant, sampling, softmax


def _softmax_rows(out, x, log):  # out, x: [rows, n]
    out[...] = softmax.log_softmax(x) if log else softmax.softmax(x)


def _attention(out, q, k, v, causal, scale, lengths):  # out, q: [B, Hq, Tq, D]
    out[...] = attention.attention(q, k, v, causal, scale, lengths)


# Sampling kernels. params: [B, 6] float64, one row per batch row, in the
# order of SAMPLE_PARAMS (C's fd_sample_params); prev_ids [n_prev] and
# prev_offsets [B + 1] int64 hold the seen ids of row r at
# prev_ids[prev_offsets[r]:prev_offsets[r + 1]], or are None. Rows that
# cannot be sampled get a negative code instead of an id (status), and each
# kernel returns how many there are (see sampling.row_problem).
SAMPLE_PARAMS = ("temperature", "top_k", "top_p", "min_p", "penalty", "u")


def _row_settings(r, params, prev_ids, prev_offsets):  # -> (filter settings, u, penalty, row r's seen ids)
    t, k, p, mp, pen, u = params[r]
    prev = None if prev_offsets is None else prev_ids[prev_offsets[r]:prev_offsets[r + 1]]
    return dict(temperature=t, top_k=int(k), top_p=p, min_p=mp), u, pen, prev


def _scaled_rows(x, params, prev_ids, prev_offsets):  # yields (r, filter settings, u, scaled row, code)
    for r in range(len(x)):
        settings, u, pen, prev = _row_settings(r, params, prev_ids, prev_offsets)
        z = sampling.scaled_logits(x[r], settings["temperature"], pen, prev)
        yield r, settings, u, z, sampling.row_problem(x[r], z)


# logits / temperature may overflow (an error, reported by code) and z - max
# may reach -inf (probability 0): neither is worth a warning
_QUIET = dict(over="ignore", invalid="ignore")


def _sample_rows(ids, x, params, prev_ids, prev_offsets):  # ids: [B], x: [B, V]
    bad = 0
    with np.errstate(**_QUIET):
        for r, settings, u, z, code in _scaled_rows(x, params, prev_ids, prev_offsets):
            if code:
                ids[r], bad = code, bad + 1
            else:
                ids[r] = sampling.draw(sampling.shifted_exp(sampling.filtered_logits(z, **settings)), u)
    return bad


def _process_rows(out, status, x, params, prev_ids, prev_offsets, probs):  # out, x: [B, V], status: [B]
    with np.errstate(**_QUIET):
        for r, settings, u, z, code in _scaled_rows(x, params, prev_ids, prev_offsets):
            status[r] = code
            if not code:
                f = sampling.filtered_logits(z, **settings)
                out[r] = sampling.probabilities(f) if probs else f
    return int(np.count_nonzero(status))


def _argmax_rows(ids, x):  # ids: [B], x: [B, V]
    for r in range(len(x)):
        code = sampling.row_problem(x[r], x[r])
        ids[r] = code if code else np.argmax(x[r])
    return int(np.count_nonzero(ids < 0))


def _repetition_penalty_rows(out, x, penalty, prev_ids, prev_offsets):  # out, x: [B, V], penalty: [B]
    for r in range(len(x)):
        out[r] = sampling.apply_repetition_penalty(x[r], prev_ids[prev_offsets[r]:prev_offsets[r + 1]], penalty[r])
    return 0


def _norm_rows(out, x, w, b, eps, rms):  # out, x: [rows, n]; w, b: [n] (b None for RMSNorm)
    out[...] = norm.rms_norm(x, w, eps) if rms else norm.layer_norm(x, w, b, eps)


def _linear(out, x, w, b):  # out: [N, out], x: [N, in], w: [out, in], b: [out] | None
    np.matmul(x, w.T, out=out)  # linear.linear, written into out (NumPy's BLAS)
    if b is not None:
        out += b


def _linear_quant(out, x, w, b):  # out: [N, out], x: [N, in] float32, w: QuantizedTensor [out, in]
    out[...] = quant.linear(x, w, b)


backend = types.SimpleNamespace(
    name="numpy",
    softmax_rows=_softmax_rows,
    attention=_attention,
    sample_rows=_sample_rows,
    process_rows=_process_rows,
    argmax_rows=_argmax_rows,
    repetition_penalty_rows=_repetition_penalty_rows,
    linear=_linear,
    linear_quant=_linear_quant,  # (out, x, w: QuantizedTensor, bias)
    norm_rows=_norm_rows,
)
