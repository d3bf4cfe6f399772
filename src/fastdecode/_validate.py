"""The validation layer: every public kernel passes its arguments through
these helpers once, before any backend runs. Backends receive float32 or
float64 C-contiguous arrays, outputs preallocated, and no input that
overlaps its output (NumPy's rule: the result is as if every input had been
copied before anything was written).
"""
from __future__ import annotations

import operator

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(x, name: str, min_ndim: int = 1, max_ndim: int | None = None) -> np.ndarray:
    """x as an ndarray of float32 or float64, without copying when it already is one."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of float32 or float64; {exc}") from None
    if x.dtype not in FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64; got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s); got a {x.ndim}-d array")
    if max_ndim is not None and x.ndim > max_ndim:
        raise ValueError(f"{name} must have at most {max_ndim} dimensions; got shape {x.shape}")
    return x


def contiguous(x):  # x, or a C-contiguous copy of it
    return x if x is None or x.flags.c_contiguous else np.ascontiguousarray(x)


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


def bias_array(bias, n_out: int, dtype: np.dtype):
    """None, or ``bias`` as a float array ``[n_out]`` of ``dtype`` (a linear's bias)."""
    if bias is None:
        return None
    bias = float_array(bias, "bias", 1, 1)
    if bias.dtype != dtype:
        raise TypeError(f"bias must have dtype {dtype} (x's); got {bias.dtype}")
    if bias.shape != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) (weight's rows); got {bias.shape}")
    return bias


def result_array(out, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A new array, or ``out`` once checked."""
    return np.empty(shape, dtype) if out is None else check_out(out, shape, dtype)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.ctypes.data == b.ctypes.data and a.shape == b.shape and a.strides == b.strides
            and a.dtype == b.dtype)


_may_share = np.may_share_memory


def apart(result: np.ndarray, *inputs, in_place: bool = False) -> tuple:
    """``inputs``, each copied where it overlaps ``result``, so a kernel may
    write ``result`` while it reads them (NumPy's overlap rule). With
    ``in_place``, an input that is exactly ``result`` (same memory, shape and
    strides) is kept: row kernels that finish reading a row before writing
    it run in place. (A plain loop: this runs on every kernel call.)"""
    copied = None
    for i, a in enumerate(inputs):
        if a is not None and _may_share(result, a) and not (in_place and _same_view(result, a)):
            copied = copied or list(inputs)
            copied[i] = a.copy()
    return inputs if copied is None else tuple(copied)


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int; got {type(axis).__name__}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def kernel_target(result: np.ndarray, shape: tuple) -> np.ndarray:
    """The C-contiguous ``shape`` array a kernel writes: ``result`` itself (a
    view) when it is contiguous, else scratch that :func:`copy_in` copies
    over. Inputs have been kept :func:`apart` from ``result`` already."""
    return result.reshape(shape) if result.flags.c_contiguous else np.empty(shape, result.dtype)


def copy_in(result: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``result`` once the kernel has written ``target`` (from :func:`kernel_target`)."""
    if not result.flags.c_contiguous:  # target is scratch: copy it in
        result[...] = target.reshape(result.shape)
    return result


def real_number(value, name: str) -> float:
    """A Python or NumPy real scalar as float (a str is not a number, though float() parses it)."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}") from None
