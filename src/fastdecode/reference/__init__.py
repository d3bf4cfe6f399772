"""The pure-NumPy backend: the readable definition of every kernel, and the
code the ``"numpy"`` backend runs.

``backend`` adapts these functions to the calling convention that
fastdecode.ops uses for every backend: inputs validated, C-contiguous and
apart from the outputs, outputs preallocated and passed first. Row kernels
loop over rows and call the one-row definitions in :mod:`.sampling`.
"""
import types

import numpy as np

from .._sampling_args import SAMPLE_PARAMS
from . import attention, linear, norm, quant, sampling, softmax


def _softmax_rows(out, x, log):  # out, x: [rows, n]
    out[...] = softmax.log_softmax(x) if log else softmax.softmax(x)


def _attention(out, q, k, v, causal, scale, lengths):  # out, q: [B, Hq, Tq, D]
    out[...] = attention.attention(q, k, v, causal, scale, lengths)


def _linear(out, x, w, b):  # out: [N, out], x: [N, in], w: [out, in], b: [out] | None
    linear.linear(x, w, b, out=out)


def _norm_rows(out, x, w, b, eps, rms):  # out, x: [rows, n]; w, b: [n] (b None for RMSNorm)
    out[...] = norm.rms_norm(x, w, eps) if rms else norm.layer_norm(x, w, b, eps)


# Sampling kernels. params: [B, len(SAMPLE_PARAMS)] float64, row r's settings
# by name; prev_ids [n_prev] and prev_offsets [B + 1] int64 hold the seen ids
# of row r at prev_ids[prev_offsets[r]:prev_offsets[r + 1]], or are None.
# Rows that cannot be sampled get a negative code instead of an id (status),
# and each kernel returns how many there are (see sampling.row_problem).

def _row(r, params, prev_ids, prev_offsets) -> dict:  # row r's settings and seen ids, as keyword arguments
    settings = dict(zip(SAMPLE_PARAMS, params[r].tolist()))
    settings["prev"] = None if prev_offsets is None else prev_ids[prev_offsets[r]:prev_offsets[r + 1]]
    return settings


# logits / temperature may overflow (an error, reported by code) and z - max
# may reach -inf (probability 0): neither is worth a warning
_QUIET = dict(over="ignore", invalid="ignore")


def _sample_rows(ids, x, params, prev_ids, prev_offsets):  # ids: [B], x: [B, V]
    with np.errstate(**_QUIET):
        for r in range(len(x)):
            ids[r] = sampling.sample(x[r], **_row(r, params, prev_ids, prev_offsets))
    return int(np.count_nonzero(ids < 0))


def _process_rows(out, status, x, params, prev_ids, prev_offsets, probs):  # out, x: [B, V], status: [B]
    with np.errstate(**_QUIET):
        for r in range(len(x)):
            settings = _row(r, params, prev_ids, prev_offsets)
            del settings["u"]
            row, status[r] = sampling.process(x[r], **settings, probs=probs)
            if row is not None:
                out[r] = row
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
