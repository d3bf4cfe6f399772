"""Weight formats: GGUF's block layouts, byte for byte.

A :class:`QuantizedTensor` holds a weight ``[out, in]`` (torch's Linear
layout) as the raw blocks GGUF stores, each output row's blocks contiguous,
rows one after another, so a tensor read from a ``.gguf`` file is used as it
lies and one written by :meth:`fastdecode.Model.save` is what llama.cpp
reads. The layouts (llama.cpp's ``ggml-common.h``; little-endian):

============  ======  =====  ==========================================================
format        block   bytes  layout of one block
============  ======  =====  ==========================================================
``q8_0``      32      34     f16 d; int8 q[32]                       w = d * q
``q4_0``      32      18     f16 d; u8 qs[16]: weight i in qs[i]'s low nibble,
                             weight i+16 in its high nibble          w = d * (q - 8)
``q4_K``      256     144    f16 d, f16 dmin; u8 scales[12] (eight 6-bit scales and
                             mins, packed as ggml's get_scale_min_k4); u8 qs[128]:
                             sub-blocks 2j and 2j+1 (32 weights each) in the low and
                             high nibbles of qs[32j:32j+32]    w = d*sc_j*q - dmin*m_j
``q6_K``      256     210    u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), int8
                             scales[16] (one per 16 weights), f16 d
                                                                     w = d*sc_j*(q - 32)
``bf16``      1       2      bfloat16 (the top half of a float32)
``f16``       1       2      IEEE float16
============  ======  =====  ==========================================================

Dequantization is the ``gguf`` package's (llama.cpp's own Python reader),
so it equals ``gguf.quants.dequantize`` bit for bit; ``q8_0``, ``q4_0`` and
``bf16`` are quantized by ``gguf.quants.quantize`` too (bit-identical to
llama.cpp's reference quantizers), ``f16`` by NumPy's round-to-nearest-even
cast, ``q4_K``/``q6_K`` by fastdecode's NumPy quantizers
(:mod:`fastdecode.reference.quant`), whose error bounds they document.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from . import backend as _backend
from ._validate import _may_share, apart, bias_array, check_out, copy_in, float_array, kernel_target

__all__ = ["FORMATS", "QuantizedTensor", "quantize", "dequantize", "from_gguf", "format_info"]


@dataclass(frozen=True)
class FormatInfo:
    name: str  # GGUF's type name, lower-cased as llama.cpp writes it (q4_K keeps its capital K)
    block: int  # weights per block
    block_bytes: int  # bytes per block
    code: int  # the C kernels' format number (fastdecode.h: FD_FMT_*)

    @property
    def gguf_type(self):
        import gguf

        return gguf.GGMLQuantizationType[self.name.upper()]

    def row_bytes(self, n_in: int) -> int:
        return n_in // self.block * self.block_bytes


FORMATS: dict[str, FormatInfo] = {f.name: f for f in (
    FormatInfo("q8_0", 32, 34, 0),
    FormatInfo("q4_0", 32, 18, 1),
    FormatInfo("q4_K", 256, 144, 2),
    FormatInfo("q6_K", 256, 210, 3),
    FormatInfo("bf16", 1, 2, 4),
    FormatInfo("f16", 1, 2, 5),
)}
_BY_LOWER = {k.lower(): k for k in FORMATS}


def format_info(fmt: str) -> FormatInfo:
    """The layout of ``fmt`` (case-insensitive: ``"Q4_K"``, ``"q4_k"``); ValueError if unknown."""
    if not isinstance(fmt, str):
        raise TypeError(f"format must be a str, one of {', '.join(FORMATS)}; got {type(fmt).__name__}")
    key = _BY_LOWER.get(fmt.strip().lower())
    if key is None:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[key]


class QuantizedTensor:
    """A weight ``[out, in]`` in one of GGUF's block formats (see the module doc).

    ``QuantizedTensor(format, shape, data)``: ``format`` a name of
    :data:`FORMATS`, ``shape`` ``(out, in)`` with ``in`` a multiple of the
    format's block, ``data`` the raw blocks as ``uint8`` (any shape with
    ``out * in / block * block_bytes`` elements; kept as ``[out, row_bytes]``,
    C-contiguous, without a copy when it already is). Raises TypeError for a
    wrong dtype, ValueError for a shape or byte count that does not fit, so
    no kernel ever reads past the blocks.

    Attributes: ``format``, ``shape``, ``data`` (``[out, row_bytes]`` uint8,
    GGUF's layout), ``layout``, ``nbytes``, ``dtype`` (float32, the dtype of
    its products).
    """

    __slots__ = ("format", "shape", "_blocks", "_x16", "_info")
    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, format: str, shape, data):
        info = format_info(format)
        try:
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise TypeError(f"shape must be a pair of ints (out, in); got {shape!r}") from None
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"shape must be (out, in) with out, in >= 0; got {shape}")
        n_out, n_in = shape
        if n_in % info.block:
            raise ValueError(f"{info.name} stores blocks of {info.block} weights: in ({n_in}) must be a multiple of it")
        if not isinstance(data, np.ndarray):
            data = np.frombuffer(memoryview(data), np.uint8)
        if data.dtype != np.uint8:
            raise TypeError(f"data must be raw blocks of dtype uint8; got {data.dtype}")
        want = n_out * info.row_bytes(n_in)
        if data.size != want:
            raise ValueError(f"data has {data.size} bytes but a {info.name} tensor of shape {shape} "
                             f"takes {want} ({info.block_bytes} per {info.block} weights)")
        self.format = info.name
        self.shape = shape
        self._blocks = np.ascontiguousarray(data).reshape(n_out, info.row_bytes(n_in))
        self._x16 = None
        self._info = info

    @property
    def data(self) -> np.ndarray:
        """The raw GGUF blocks, uint8 ``[out, row_bytes]``. After :meth:`repack`,
        rebuilt from the interleaved copy on each access (a new read-only array)."""
        if self._blocks is not None:
            return self._blocks
        from . import backend

        out = np.empty(self._x16.shape, np.uint8)
        backend._native.x16_convert(out, self._x16, self._info.code, False)
        out.flags.writeable = False
        return out

    @property
    def layout(self) -> str:
        """``"gguf"`` (rows one after another), or ``"x16"`` after :meth:`repack`."""
        return "gguf" if self._x16 is None else "x16"

    def repack(self, keep_gguf: bool = False) -> "QuantizedTensor":
        """Rearrange the blocks, in place, into the layout the AVX-512 int8
        kernels read fastest: 16 rows interleaved 4 bytes at a time
        (``csrc/quant_x16.c`` draws it), the same bytes, GGUF's layout
        given back by :attr:`data` (the last ``out % 16`` rows stay as they
        are). Only the block formats (``q8_0``, ``q4_0``, ``q4_K``,
        ``q6_K``) with ``out >= 16`` (and the C backend built); otherwise
        nothing changes. ``keep_gguf=True`` keeps GGUF's copy too (twice the
        memory; an embedding table that is also the output head: lookups
        read GGUF's rows, products the interleaved copy).
        ``fastdecode.load`` repacks a model's projections when the CPU has
        AVX-512. Returns ``self``."""
        if self._x16 is not None or self._info.code > 3 or self.shape[0] < 16:
            return self
        from . import backend

        if backend._native is None:
            return self
        from .arrays import empty_aligned

        x16 = empty_aligned(self._blocks.shape, np.uint8)
        backend._native.x16_convert(x16, self._blocks, self._info.code, True)
        x16.flags.writeable = False
        self._x16 = x16
        if not keep_gguf:
            self._blocks = None
        return self

    @property
    def has_gguf_blocks(self) -> bool:
        """Whether GGUF's bytes are held as such (not rebuilt from the interleaved copy)."""
        return self._blocks is not None

    def kernel_view(self):
        """``(blocks, code)``: the bytes the C kernels read, uint8 ``[out,
        row_bytes]``, and their format number (fastdecode.h's ``FD_FMT_*``)."""
        if self._x16 is None:
            return self._blocks, self._info.code
        return self._x16, self._info.code + 6  # FD_FMT_Q8_0_X16 .. FD_FMT_Q6_K_X16

    @property
    def nbytes(self) -> int:
        return (self._blocks if self._x16 is None else self._x16).nbytes

    @property
    def info(self) -> FormatInfo:
        return self._info

    def __repr__(self):
        return f"QuantizedTensor({self.format!r}, shape={self.shape}, nbytes={self.nbytes})"

    def dequantize(self) -> np.ndarray:
        return dequantize(self)

    def __getitem__(self, rows) -> np.ndarray:
        """``qt[ids]``: the dequantized rows ``ids`` (ints, or an int array),
        float32 ``[..., in]``: an embedding lookup that decodes only those rows."""
        ids = np.asarray(rows)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"QuantizedTensor rows are picked by integer ids; got {ids.dtype}")
        flat = ids.reshape(-1)
        if flat.size and (flat.min() < -self.shape[0] or flat.max() >= self.shape[0]):
            raise IndexError(f"row ids must lie in [-{self.shape[0]}, {self.shape[0]}); got {flat.min()}..{flat.max()}")
        if self._blocks is not None:
            blocks = self._blocks[flat]
        else:  # only those rows back to GGUF's layout
            blocks = np.empty((flat.size, self._x16.shape[1]), np.uint8)
            _backend._native.x16_rows(blocks, self._x16, self._info.code, np.ascontiguousarray(flat % self.shape[0], np.int64))
        part = QuantizedTensor(self.format, (flat.size, self.shape[1]), blocks)
        return dequantize(part).reshape(ids.shape + (self.shape[1],))


def quantize(w, fmt: str) -> QuantizedTensor:
    """``w`` (float ``[out, in]``, any float dtype) in format ``fmt``.

    ``in`` must be a multiple of the format's block (32 for q8_0/q4_0, 256
    for q4_K/q6_K) or ValueError. Non-finite weights are refused
    (ValueError): a block's scale would turn them into garbage silently;
    so are weights beyond float16's range for f16."""
    info = format_info(fmt)
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise TypeError(f"w must be a float array; got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out, in]; got shape {w.shape}")
    if w.shape[1] % info.block:
        raise ValueError(f"{info.name} stores blocks of {info.block} weights: w's in ({w.shape[1]}) must be a multiple of it")
    w = np.ascontiguousarray(w, np.float32)
    if not np.isfinite(w).all():
        raise ValueError("w has non-finite values (NaN or inf); no block format can hold them")
    if info.name == "f16":
        with np.errstate(over="ignore"):
            h = w.astype(np.float16)
        if not np.isfinite(h).all():
            raise ValueError("w has values beyond float16's range (65504); use bf16")
        data = h.view(np.uint8)
    elif info.name in ("q4_K", "q6_K"):
        from .reference import quant

        data = quant.QUANTIZERS[info.name](w)
    else:
        import gguf.quants

        data = gguf.quants.quantize(w, info.gguf_type)
    return QuantizedTensor(info.name, w.shape, data)


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """The float32 weight ``[out, in]`` that ``qt`` stands for: ``gguf.quants.dequantize``."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor; got {type(qt).__name__}")
    if qt.nbytes == 0:
        return np.zeros(qt.shape, np.float32)
    from . import backend

    if backend.get_backend() == "c":  # the same bits (tests/test_formats.py), decoded in C
        out = np.empty(qt.shape, np.float32)
        backend._native.dequantize_rows(out, *qt.kernel_view())
        return out
    from .reference import quant

    return quant.dequantize(qt)


def from_gguf(qtype, shape, data) -> QuantizedTensor:
    """A QuantizedTensor from a GGUF tensor: ``qtype`` a ``gguf.GGMLQuantizationType``
    (or its name), ``shape`` ``(out, in)`` (GGUF lists dimensions the other
    way round: ``ne = [in, out]``), ``data`` its raw bytes. ValueError for a
    type fastdecode has no kernels for, or a byte count that does not fit."""
    name = getattr(qtype, "name", qtype)
    if not isinstance(name, str):
        raise TypeError(f"qtype must be a gguf.GGMLQuantizationType; got {qtype!r}")
    if name.lower() not in _BY_LOWER:
        raise ValueError(f"GGUF type {name} has no fastdecode kernels; supported: {', '.join(FORMATS)}")
    if isinstance(data, np.ndarray):
        data = data.view(np.uint8) if data.dtype != np.uint8 and data.flags.c_contiguous else data
    return QuantizedTensor(name, shape, data)


# ---------------------------------------------------------------------------
# The product with a quantized weight (fastdecode.ops.linear hands it here)
# ---------------------------------------------------------------------------

_F32 = np.dtype(np.float32)

def linear(x, weight: QuantizedTensor, bias=None, out=None) -> np.ndarray:
    """``x @ dequantize(weight).T + bias``: x float32 ``[..., in]``, bias
    float32 ``[out]`` or None; returns float32 ``[..., out]``. Validates
    everything the kernels read, then runs the active backend's
    ``linear_quant``. (Runs once per projection of a Python decode step:
    its checks are kept to a few microseconds.)"""
    x = float_array(x, "x", 1)
    if x.dtype != _F32:
        raise TypeError(f"x must be float32 for a {weight.format} weight (its products are float32); got {x.dtype}")
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x has {x.shape[-1]} features (last axis) but weight takes {n_in} (shape {weight.shape})")
    blocks = weight._x16 if weight._x16 is not None else weight._blocks
    if blocks.shape != (n_out, weight._info.row_bytes(n_in)) or not blocks.flags.c_contiguous \
            or blocks.dtype != np.uint8:  # someone reshaped the blocks after construction
        raise ValueError(f"weight.data no longer holds the blocks of a {weight.format} tensor of shape {weight.shape}")
    if bias is not None:
        bias = np.ascontiguousarray(bias_array(bias, n_out, _F32))
    shape = x.shape[:-1] + (n_out,)
    result = np.empty(shape, np.float32) if out is None else check_out(out, shape, _F32)
    if result.size == 0:
        return result
    if n_in == 0:
        result[...] = 0 if bias is None else bias
        return result
    x2 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(result.size // n_out, n_in)  # [N, in]
    if out is not None:
        x2, bias = apart(result, x2, bias)  # written while they are read (NumPy's overlap rule)
        if _may_share(result, blocks):
            weight = QuantizedTensor(weight.format, weight.shape, weight.data.copy())
    target = kernel_target(result, (x2.shape[0], n_out))
    _backend.active().linear_quant(target, x2, weight, bias)
    return copy_in(result, target)
