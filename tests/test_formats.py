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
    with pytest.raises(ValueError, match="float16's range"):
        fd.quantize(np.full((1, 32), 1e5, np.float32), "f16")
    assert formats.format_info("Q4_K").name == "q4_K"
    x = np.ones((2, 64), np.float32)
    with pytest.raises(TypeError, match="float32"):
        fd.linear(x.astype(np.float64), good)
    with pytest.raises(ValueError, match="features"):
        fd.linear(np.ones((2, 32), np.float32), good)
    with pytest.raises(ValueError, match="bias"):
        fd.linear(x, good, np.ones(3, np.float32))
    broken = fd.quantize(weights(rng, (4, 64)), "q8_0")
    with pytest.raises(AttributeError):
        broken.data = broken.data[:, :10]  # the blocks are not replaceable
    broken.data.shape = (8, 34)  # reshaped in place after construction: refused before any kernel
    with pytest.raises(ValueError, match="no longer"):
        fd.linear(x, broken)


# ---------------------------------------------------------------------------
# fd.linear on a QuantizedTensor: C kernels against the NumPy reference
# ---------------------------------------------------------------------------

EPS = float(np.finfo(np.float32).eps)


def assert_close_to_reference(got, x, qt, b):
    """The reference (reference/quant.py) and the C kernels compute the same
    exact per-block integer sums (block formats, <= INT8_X_MAX_ROWS rows) or the same float
    products (bf16/f16, prefill); they differ by float32 rounding: each block
    term is rounded a few times (scale products, the int32 -> float
    conversion) and the n_in / 32 block terms, plus the offset terms of
    q4_0/q4_K/q6_K (as large as 15 steps), are summed in float32 in another
    order. Bound: 16 eps * (sqrt(n_blocks) + 1) * sum_i |x_i| (|w_i| + max|w|),
    max|w| standing for the offsets' size."""
    with fd.use_backend("numpy"):
        want = ops.linear(x, qt, b)
    w = fd.dequantize(qt).astype(np.float64)
    x2 = np.abs(x.reshape(-1, qt.shape[1]).astype(np.float64))
    scale = x2 @ (np.abs(w) + np.abs(w).max(axis=1, keepdims=True)).T
    tol = 16 * EPS * (np.sqrt(qt.shape[1] / 32) + 1) * scale.reshape(want.shape) + 1e-30
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), tol)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 33])
def test_c_linear_every_level(simd, fmt, rows, rng):
    n_in = 512
    qt = fd.quantize(weights(rng, (37, n_in)), fmt)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    assert_close_to_reference(fd.linear(x, qt, b), x, qt, b)
    assert_close_to_reference(fd.linear(x, qt), x, qt, None)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n_out", [1, 3, 4097])
def test_c_linear_odd_shapes(simd, fmt, n_out, rng):
    n_in = 256 if "K" in fmt else 96  # 96: an odd number of 32-blocks
    qt = fd.quantize(weights(rng, (n_out, n_in)), fmt)
    for rows in (1, 4, 9):
        x = rng.standard_normal((rows, n_in)).astype(np.float32)
        assert_close_to_reference(fd.linear(x, qt), x, qt, None)


def test_c_dequantize_rows_is_gguf(simd, rng):
    from fastdecode import _native

    for fmt in FORMATS:
        qt = fd.quantize(weights(rng, (5, 768)), fmt)
        out = np.empty(qt.shape, np.float32)
        _native.dequantize_rows(out, qt.data, qt.info.code)
        np.testing.assert_array_equal(out.view(np.uint32), fd.dequantize(qt).view(np.uint32))
        with pytest.raises(ValueError):  # the wrapper keeps C inside the blocks it is handed
            _native.dequantize_rows(np.empty((5, 800), np.float32), qt.data, qt.info.code)


@pytest.mark.parametrize("fmt", ["q4_0", "q6_K", "bf16"])
def test_linear_layouts_out_threads(backend, fmt, rng):
    qt = fd.quantize(weights(rng, (300, 512)), fmt)
    b = rng.standard_normal(300).astype(np.float32)
    xf = np.asfortranarray(rng.standard_normal((3, 512)).astype(np.float32))  # non-contiguous rows
    assert_close_to_reference(fd.linear(xf, qt, b), np.ascontiguousarray(xf), qt, b)
    x3 = rng.standard_normal((2, 2, 512)).astype(np.float32)
    y3 = fd.linear(x3, qt, b)
    assert y3.shape == (2, 2, 300)
    assert_close_to_reference(y3.reshape(4, 300), x3.reshape(4, 512), qt, b)
    out = np.empty((3, 300), np.float32)
    assert fd.linear(xf, qt, b, out=out) is out
    assert_close_to_reference(out, np.ascontiguousarray(xf), qt, b)
    strided = np.empty((3, 600), np.float32)[:, ::2]
    fd.linear(xf, qt, b, out=strided)
    assert_close_to_reference(np.ascontiguousarray(strided), np.ascontiguousarray(xf), qt, b)
    x1 = rng.standard_normal(512).astype(np.float32)[::1]
    assert fd.linear(x1, qt).shape == (300,)
    before = fd.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fd.set_num_threads(threads)
            assert_close_to_reference(fd.linear(xf, qt, b), np.ascontiguousarray(xf), qt, b)
    finally:
        fd.set_num_threads(before)


def test_prefill_rows_match_float_product(backend, rng):
    """More than INT8_X_MAX_ROWS rows: float32 x times the dequantized weight (both backends)."""
    for fmt in FORMATS:
        qt = fd.quantize(weights(rng, (70, 256)), fmt)
        x = rng.standard_normal((ref_quant.INT8_X_MAX_ROWS + 1, 256)).astype(np.float32)
        w = fd.dequantize(qt).astype(np.float64)
        want = x.astype(np.float64) @ w.T
        scale = np.abs(x).astype(np.float64) @ np.abs(w).T
        np.testing.assert_array_less(np.abs(fd.linear(x, qt) - want), 4 * EPS * 16 * scale + 1e-30)


def test_int8_activations_error_is_bounded(rng):
    """What int8 activations cost against the float32 product of the same
    dequantized weights: each x_i moves by at most d_x / 2 = amax/254 of its block."""
    for fmt in ("q8_0", "q4_K"):
        qt = fd.quantize(weights(rng, (64, 512)), fmt)
        x = rng.standard_normal((2, 512)).astype(np.float32)
        w = fd.dequantize(qt).astype(np.float64)
        amax = np.repeat(np.abs(x.reshape(2, -1, 32)).max(axis=2), 32, axis=1)
        bound = (amax / 254) @ np.abs(w).T * (1 + 1e-3) + 1e-6
        got = fd.linear(x, qt)
        np.testing.assert_array_less(np.abs(got - x.astype(np.float64) @ w.T), bound)


@pytest.mark.skipif(not __import__("shutil").which("gcc"), reason="gcc is not installed")
@pytest.mark.skipif("avx512" not in fd.backend_info().get("simd_levels", ()), reason="the CPU has no AVX-512")
def test_quantize_x_avx512_equals_portable(tmp_path):
    """x to int8 blocks (fd_quantize_x, csrc/quant_dot.c): the AVX-512 path gives the portable C's bytes."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = ["-O3", "-fno-math-errno", "-std=gnu11", "-I", os.path.join(root, "csrc"), "-DFD_HAVE_X86_LEVELS=1",
             "-DFD_HAVE_PTHREADS=1"]  # the build's (CMakeLists.txt)
    levels = {"portable": [], "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]}
    objects = []
    for level, extra in levels.items():
        objects.append(str(tmp_path / f"quant_dot_{level}.o"))
        subprocess.run(["gcc", *flags, *extra, f"-DFD_LEVEL_{level}=1", "-c", os.path.join(root, "csrc", "quant_dot.c"),
                        "-o", objects[-1]], check=True)
    exe = str(tmp_path / "quantize_x_levels")
    subprocess.run(["gcc", *flags, os.path.join(root, "tests", "c", "quantize_x_levels.c"), *objects, "-lm", "-o", exe],
                   check=True)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_nonfinite_x_gives_nan(backend, rng):
    qt = fd.quantize(weights(rng, (4, 64)), "q8_0")
    x = np.ones((2, 64), np.float32)
    x[0, 3] = np.inf
    y = fd.linear(x, qt)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_format_benchmark_cases_build_and_run(monkeypatch):
    from fastdecode.benchmarks import bandwidth, harness
    from fastdecode.benchmarks import linear as bench

    small_probe = bandwidth.read_probe
    monkeypatch.setattr(bandwidth, "read_probe", lambda: small_probe(1 << 16))
    monkeypatch.setattr(bench, "FORMAT_QUICK", [(256, 32)])  # torch int4 packs 16 rows at a time
    monkeypatch.setattr(bench, "STREAM_BYTES", 4 * 256 * 32 * 2)
    (case,) = bench.format_cases(quick=True)
    names = {f"fastdecode-c {f}" for f in FORMATS} | {"fastdecode-c float32", "numpy float32"}
    assert names <= set(case.contenders)
    for name, fn in case.contenders.items():
        assert tuple(np.asarray(fn()).shape) == (1, 32), name
    rows = harness.run([case], [1], rounds=1, sample_s=0.0005)
    lines = bench.notes(rows)
    assert len(lines) == 1 and "fastdecode-c q4_0" in lines[0] and "GB/s" in lines[0]
    assert set(rows[0]["params"]["read_gbps"]) >= names
