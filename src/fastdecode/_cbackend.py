"""The C backend's kernels in ops' calling convention.

float32 runs in C; float64 is served by the NumPy reference (documented in
the README): the C kernels are float32 end to end.
"""
import types

import numpy as np

from . import _native, reference

_ref = reference.backend


def _softmax_rows(out, x, log):  # out, x: [rows, n]
    if x.dtype == np.float32:
        _native.softmax_rows(out, x, log)
    else:
        _ref.softmax_rows(out, x, log)


backend = types.SimpleNamespace(
    name="c",
    softmax_rows=_softmax_rows,
    attention=_ref.attention,  # until the C attention kernel lands
)
