"""The C backend's kernels in ops' calling convention.

float32 runs in C; float64 is served by the NumPy reference (documented in
the README): the C kernels are float32 end to end.
"""
import types

import numpy as np

from . import _native, reference
from .reference import quant as _ref_quant

_ref = reference.backend


def _float32_in_c(native, reference, data_arg=1):
    """A kernel that runs `native` when its float input (argument `data_arg`,
    after the outputs) is float32, else `reference`."""
    def kernel(*args):
        return (native if args[data_arg].dtype == np.float32 else reference)(*args)

    return kernel


LINEAR_C_ROWS = 8  # up to this many rows (a decode step) stream W in C; more (a prefill) go to BLAS sgemm


def _linear(out, x, w, b):  # out: [N, out], x: [N, in], w: [out, in], b: [out] | None
    if x.dtype == np.float32 and x.shape[0] <= LINEAR_C_ROWS:
        _native.linear_f32(out, x, w, b)
    else:
        _ref.linear(out, x, w, b)


# A quantized weight: up to INT8_X_MAX_ROWS rows of x (decode steps, short
# prompts) run in C (int8 x for the block formats), passes of 8 rows over W;
# a longer prefill decodes tiles of QUANT_TILE_BYTES of float32 weights in C
# and hands each to BLAS sgemm, which is compute-efficient at many rows.
QUANT_TILE_BYTES = 4 << 20


def _linear_quant(out, x, w, b):  # out: [N, out], x: [N, in] float32, w: QuantizedTensor [out, in]
    blocks, fmt = w.kernel_view()
    if x.shape[0] <= _ref_quant.INT8_X_MAX_ROWS:
        _native.linear_quant(out, x, blocks, b, fmt)
        return
    n_out, n_in = w.shape
    step = max(16, QUANT_TILE_BYTES // (4 * n_in) // 16 * 16)  # whole groups of an x16 layout
    tile = np.empty((min(step, n_out), n_in), np.float32)
    part = np.empty((x.shape[0], tile.shape[0]), np.float32)
    for lo in range(0, n_out, step):
        hi = min(lo + step, n_out)
        _native.dequantize_rows(tile[:hi - lo], blocks[lo:hi], fmt)
        np.matmul(x, tile[:hi - lo].T, out=part[:, :hi - lo])
        out[:, lo:hi] = part[:, :hi - lo]
    if b is not None:
        out += b


backend = types.SimpleNamespace(
    name="c",
    softmax_rows=_float32_in_c(_native.softmax_rows, _ref.softmax_rows),  # (out, x, log)
    attention=_float32_in_c(_native.attention_f32, _ref.attention),  # (out, q, k, v, causal, scale, lengths)
    sample_rows=_float32_in_c(_native.sample_rows, _ref.sample_rows),
    process_rows=_float32_in_c(_native.process_rows, _ref.process_rows, data_arg=2),  # (out, status, x, ...)
    argmax_rows=_float32_in_c(_native.argmax_rows, _ref.argmax_rows),
    repetition_penalty_rows=_float32_in_c(_native.repetition_penalty_rows, _ref.repetition_penalty_rows),
    linear=_linear,  # (out, x, w, bias)
    linear_quant=_linear_quant,  # (out, x, w: QuantizedTensor, bias)
    norm_rows=_float32_in_c(_native.norm_rows, _ref.norm_rows),  # (out, x, w, b, eps, rms)
)
