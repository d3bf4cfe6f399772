"""The C backend's kernels in ops' calling convention.

float32 runs in C; float64 is served by the NumPy reference (documented in
the README): the C kernels are float32 end to end.
"""
import types

import numpy as np

from . import _native, reference

_ref = reference.backend


def _float32_in_c(native, reference):
    """A kernel that runs `native` when its first input is float32, else `reference`."""
    def kernel(out, x, *args):
        (native if x.dtype == np.float32 else reference)(out, x, *args)

    return kernel


backend = types.SimpleNamespace(
    name="c",
    softmax_rows=_float32_in_c(_native.softmax_rows, _ref.softmax_rows),  # (out, x, log)
    attention=_float32_in_c(_native.attention_f32, _ref.attention),  # (out, q, k, v, causal, scale, lengths)
)
