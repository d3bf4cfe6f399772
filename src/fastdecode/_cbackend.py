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


def _float32_or_reference(kernel, reference_kernel):
    """The C kernel for float32 logits (argument 1), the reference for float64."""
    def run(*args):
        return kernel(*args) if args[1].dtype == np.float32 else reference_kernel(*args)
    return run


def _process_rows(out, status, x, *rest):  # out, x: [B, V]; x is argument 2 here
    kernel = _native.process_rows if x.dtype == np.float32 else _ref.process_rows
    return kernel(out, status, x, *rest)


backend = types.SimpleNamespace(
    name="c",
    softmax_rows=_softmax_rows,
    sample_rows=_float32_or_reference(_native.sample_rows, _ref.sample_rows),
    process_rows=_process_rows,
    argmax_rows=_float32_or_reference(_native.argmax_rows, _ref.argmax_rows),
    repetition_penalty_rows=_float32_or_reference(_native.repetition_penalty_rows, _ref.repetition_penalty_rows),
    attention=_ref.attention,  # until the C attention kernel lands
)
