"""Weight formats (fastdecode.formats): GGUF's block layouts byte for byte,
dequantization equal to gguf.quants', quantization equal to gguf.quants'
where it has one (q8_0, q4_0, bf16) and within the documented bound where
fastdecode quantizes itself (q4_K, q6_K); fd.linear on a QuantizedTensor
(C kernels at every SIMD level against the NumPy reference); bad input."""
import gguf
import gguf.quants as gq
import numpy as np
import pytest

import fastdecode as fd
from fastdecode import formats, ops
from fastdecode.reference import quant as ref_quant

FORMATS = list(formats.FORMATS)


def weights(rng, shape, scale=0.05):
    """Weights as trained models have them: mostly small, a few outliers, some zero blocks."""
    w = rng.standard_normal(shape).astype(np.float32) * scale
    w.flat[rng.integers(0, w.size, max(1, w.size // 500))] *= 20
    if shape[1] >= 256 and shape[0] > 1:
        w[0, :256] = 0  # an all-zero block: scales of zero must not divide by zero
    return w


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_is_gguf_bit_for_bit(fmt, rng):
    w = weights(rng, (7, 512))
    qt = fd.quantize(w, fmt)
    info = formats.format_info(fmt)
    assert qt.format == fmt and qt.shape == (7, 512) and qt.data.dtype == np.uint8
    assert qt.nbytes == 7 * 512 // info.block * info.block_bytes == qt.data.nbytes
    want = gq.dequantize(qt.data, info.gguf_type)
    got = fd.dequantize(qt)
    assert got.dtype == np.float32 and got.shape == w.shape
    np.testing.assert_array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "bf16", "f16"])
def test_quantize_is_gguf_bit_for_bit(fmt, rng):
    w = weights(rng, (5, 256))
    qt = fd.quantize(w, fmt)
    want = gq.quantize(w, formats.format_info(fmt).gguf_type)
    np.testing.assert_array_equal(qt.data, np.asarray(want).view(np.uint8).reshape(qt.data.shape))


@pytest.mark.parametrize("fmt", ["q4_K", "q6_K"])
@pytest.mark.parametrize("scale", [1e-3, 0.05, 3.0])
def test_k_quants_error_within_half_a_step(fmt, scale, rng):
    """reference/quant.py's bound: each weight within half its sub-block's step
    (d * sc_j, read back from the blocks by gguf's own unpacking), plus float32
    rounding of the dequantization (a few ulps of the largest term)."""
    w = weights(rng, (9, 768), scale)
    w[1, 256:512] = np.abs(w[1, 256:512])  # a block with no negative weight (min 0)
    w[2, 512:768] = -np.abs(w[2, 512:768])  # and one with no positive weight
    qt = fd.quantize(w, fmt)
    blocks = qt.data.reshape(-1, qt.info.block_bytes)
    if fmt == "q4_K":
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
        sc, m = gq.Q4_K.get_scale_min(blocks[:, 4:16])
        step = np.repeat(d * sc.astype(np.float32), 32, axis=1)
        big = np.repeat(dmin * m.astype(np.float32), 32, axis=1) + 15 * step
    else:
        sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
        d = blocks[:, 208:210].view(np.float16).astype(np.float32)
        step = np.repeat(d * sc, 16, axis=1)
        big = 32 * step
    err = np.abs(fd.dequantize(qt) - w).reshape(step.shape)
    np.testing.assert_array_less(err, step / 2 + 4 * np.finfo(np.float32).eps * big + 1e-30)
    assert (step >= 0).all()
    # and the bound is not vacuous: steps are close to the smallest that cover each sub-block
    sub = w.reshape(step.shape[0], -1, 32 if fmt == "q4_K" else 16)
    spread = sub.max(axis=2) - np.minimum(sub.min(axis=2), 0) if fmt == "q4_K" else np.abs(sub).max(axis=2)
    steps = step.reshape(sub.shape)[:, :, 0]
    live = spread > 0
    ratio = steps[live] / spread[live] * (15 if fmt == "q4_K" else 31)  # 1: the smallest step that covers it
    assert np.median(ratio) < 1.1 and ratio.max() < 2.5


def test_all_zero_and_tiny_weights(rng):
    for fmt in FORMATS:
        z = np.zeros((2, 256), np.float32)
        np.testing.assert_array_equal(fd.dequantize(fd.quantize(z, fmt)), z)
        tiny = np.full((1, 256), 1e-30, np.float32)  # below float16's range: scales flush to zero, no NaN
        assert np.isfinite(fd.dequantize(fd.quantize(tiny, fmt))).all()


def test_k_layout_matches_gguf_unpacking():
    """Weights chosen so every 6-bit scale/min and every 4/6-bit code is
    distinct: a packing mistake (nibble order, scale bits) changes the values."""
    i = np.arange(256, dtype=np.float32)
    w = ((i % 32) * (1 + i // 32) / 64 - (i // 32) / 8).reshape(1, 256)
    for fmt, tol in (("q4_K", 0.1), ("q6_K", 0.02)):
        dq = fd.dequantize(fd.quantize(w, fmt))
        assert np.abs(dq - w).max() < tol * np.abs(w).max(), fmt


# ---------------------------------------------------------------------------
# from_gguf and bad input
# ---------------------------------------------------------------------------

def test_from_gguf(rng):
    w = weights(rng, (3, 256))
    raw = gq.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    qt = formats.from_gguf(gguf.GGMLQuantizationType.Q8_0, (3, 256), raw.tobytes())
    np.testing.assert_array_equal(fd.dequantize(qt), gq.dequantize(raw, gguf.GGMLQuantizationType.Q8_0))
    with pytest.raises(ValueError, match="bytes"):
        formats.from_gguf(gguf.GGMLQuantizationType.Q8_0, (3, 256), raw.tobytes()[:-1])
    with pytest.raises(ValueError, match="no fastdecode kernels"):
        formats.from_gguf(gguf.GGMLQuantizationType.Q5_K, (3, 256), raw.tobytes())
    f16 = w.astype(np.float16)
    np.testing.assert_array_equal(fd.dequantize(formats.from_gguf(gguf.GGMLQuantizationType.F16, (3, 256), f16)),
                                  f16.astype(np.float32))


def test_bad_tensors_and_arguments(rng):
    good = fd.quantize(weights(rng, (4, 64)), "q8_0")
    with pytest.raises(ValueError, match="bytes"):
        fd.QuantizedTensor("q8_0", (4, 64), good.data.ravel()[:-1])
    with pytest.raises(ValueError, match="bytes"):
        fd.QuantizedTensor("q8_0", (5, 64), good.data)
    with pytest.raises(ValueError, match="multiple"):
        fd.QuantizedTensor("q8_0", (4, 48), good.data)
    with pytest.raises(TypeError, match="uint8"):
        fd.QuantizedTensor("q8_0", (4, 64), good.data.view(np.int8))
    with pytest.raises(ValueError, match="unknown weight format"):
        fd.QuantizedTensor("q3_0", (4, 64), good.data)
    with pytest.raises(ValueError, match="shape"):
        fd.QuantizedTensor("q8_0", (4, 64, 1), good.data)
    with pytest.raises(ValueError, match="multiple of it"):
        fd.quantize(np.ones((2, 100), np.float32), "q4_K")
    with pytest.raises(ValueError, match="non-finite"):
        fd.quantize(np.full((1, 32), np.nan, np.float32), "q4_0")
    with pytest.raises(TypeError):
        fd.quantize(np.ones((1, 32), np.int32), "q4_0")
    assert formats.format_info("Q4_K").name == "q4_K"
    x = np.ones((2, 64), np.float32)
    with pytest.raises(TypeError, match="float32"):
        fd.linear(x.astype(np.float64), good)
    with pytest.raises(ValueError, match="features"):
        fd.linear(np.ones((2, 32), np.float32), good)
    with pytest.raises(ValueError, match="bias"):
        fd.linear(x, good, np.ones(3, np.float32))
    broken = fd.quantize(weights(rng, (4, 64)), "q8_0")
    broken.data = broken.data[:, :10]  # replaced after construction: refused before any kernel
    with pytest.raises(ValueError, match="no longer"):
        fd.linear(x, broken)
