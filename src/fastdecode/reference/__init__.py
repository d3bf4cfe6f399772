"""The pure-NumPy backend: the readable definition of every kernel.

``backend`` adapts these functions to the calling convention that
fastdecode.ops uses for every backend: inputs validated and C-contiguous,
outputs preallocated and passed first.
"""
import types

from . import attention, softmax


def _softmax_rows(out, x, log):  # out, x: [rows, n]
    out[...] = softmax.log_softmax(x) if log else softmax.softmax(x)


def _attention(out, q, k, v, causal, scale, lengths):  # out, q: [B, Hq, Tq, D]
    out[...] = attention.attention(q, k, v, causal, scale, lengths)


backend = types.SimpleNamespace(
    name="numpy",
    softmax_rows=_softmax_rows,
    attention=_attention,
)
