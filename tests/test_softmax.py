"""softmax / log_softmax: both backends and every SIMD level against a
float64 oracle, layouts, out=, special values, bad input.

Tolerances (float32 against the float64 oracle): softmax rtol 1e-5 plus
atol 1e-6 (relative to a row's largest probability of 1 at most);
log_softmax atol 2e-5 + rtol 1e-5 on finite entries (x - max - log(sum) adds
a few float32 roundings of values up to |x|).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdecode as fd
from conftest import RUN_SIMD, SIMD_LEVELS, requires_c, requires_two_simd_levels

SM_RTOL, SM_ATOL = 1e-5, 1e-6
LSM_RTOL, LSM_ATOL = 1e-5, 2e-5


def oracle(x, axis=-1, log=False):
    """float64 softmax with NaN for undefined rows (NaN, +inf, all -inf)."""
    x64 = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    if x64.size == 0:
        return np.moveaxis(x64.copy(), -1, axis)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = x64.max(axis=-1, keepdims=True)
        bad = np.isnan(m) | (m == np.inf) | (m == -np.inf)
        m = np.where(bad, 0, m)
        s = np.exp(x64 - m).sum(axis=-1, keepdims=True)
        r = x64 - m - np.log(s) if log else np.exp(x64 - m) / s
        r = np.where(bad, np.nan, r)
    return np.moveaxis(r, -1, axis)


def check(y, x, axis=-1, log=False):
    ref = oracle(x, axis, log)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.array_equal(np.isnan(y), np.isnan(ref)), "NaN pattern differs"
    if log:
        assert np.array_equal(np.isneginf(y), np.isneginf(ref)), "-inf pattern differs"
        fin = np.isfinite(ref)
        np.testing.assert_allclose(y[fin], ref[fin], rtol=LSM_RTOL, atol=LSM_ATOL)
    else:
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(y[ok], ref[ok], rtol=SM_RTOL, atol=SM_ATOL)


# ---------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 33, 100, 1000, 32000, 50257, 128256, 151936])
@pytest.mark.parametrize("log", [False, True])
def test_vocab_sizes(backend, rng, n, log):
    x = (rng.standard_normal((2, n)) * 6).astype(np.float32)
    check(fd.log_softmax(x) if log else fd.softmax(x), x, log=log)


@pytest.mark.parametrize("n", [1, 5, 16, 31, 64, 257, 50257])
@pytest.mark.parametrize("log", [False, True])
def test_every_simd_level(simd, rng, n, log):
    x = (rng.standard_normal((3, n)) * 10).astype(np.float32)
    x[0, ::5] = -np.inf
    check(fd.log_softmax(x) if log else fd.softmax(x), x, log=log)


@requires_two_simd_levels
def test_simd_levels_agree(rng):
    x = (rng.standard_normal((4, 50257)) * 8).astype(np.float32)
    results = {}
    for level in SIMD_LEVELS:  # the levels this CPU runs: set_simd never goes above them
        assert fd.set_simd(level) == level
        results[level] = fd.softmax(x)
    fd.set_simd(RUN_SIMD)
    for y in results.values():
        np.testing.assert_allclose(y, results[SIMD_LEVELS[0]], rtol=2e-6, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 300), scale=st.sampled_from([0.1, 1.0, 30.0, 1e4]),
       log=st.booleans(), use_c=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_shapes_and_scales(rows, n, scale, log, use_c, seed):
    if use_c and "c" not in fd.backend_info()["available"]:
        use_c = False
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * scale).astype(np.float32)
    with fd.use_backend("c" if use_c else "numpy"):
        check(fd.log_softmax(x) if log else fd.softmax(x), x, log=log)


def test_c_matches_numpy_reference(rng):
    if "c" not in fd.backend_info()["available"]:
        pytest.skip("the C backend is not built")
    x = (rng.standard_normal((16, 50257)) * 5).astype(np.float32)
    with fd.use_backend("numpy"):
        ref = fd.softmax(x)
    with fd.use_backend("c"):
        got = fd.softmax(x)
    np.testing.assert_allclose(got, ref, rtol=SM_RTOL, atol=SM_ATOL)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 50257), (2, 128256), (64, 1000), (5, 40000)])
def test_threaded_paths(rng, threads, shape):
    """Row-split (few long rows) and row-parallel (many rows) paths."""
    if "c" not in fd.backend_info()["available"]:
        pytest.skip("the C backend is not built")
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    x[0, -3:] = -np.inf
    before = fd.get_num_threads()
    fd.set_num_threads(threads)
    try:
        with fd.use_backend("c"):
            check(fd.softmax(x), x)
            check(fd.log_softmax(x), x, log=True)
    finally:
        fd.set_num_threads(before)


# ---------------------------------------------------------------------------
# Layouts, axes, out=, dtypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_any_axis(backend, rng, axis):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y = fd.softmax(x, axis=axis)
    check(y, x, axis=axis)
    assert y.flags.c_contiguous


def test_fortran_and_strided(backend, rng):
    base = rng.standard_normal((40, 70)).astype(np.float32)
    for x in (np.asfortranarray(base), base[::2, ::3], base.T, base[:, 5:60]):
        check(fd.softmax(x), x)
        check(fd.log_softmax(x), x, log=True)


def test_out_contiguous_and_strided(backend, rng):
    x = rng.standard_normal((6, 33)).astype(np.float32)
    out = np.empty_like(x)
    assert fd.softmax(x, out=out) is out
    check(out, x)
    big = np.zeros((6, 66), np.float32)
    strided = big[:, ::2]
    assert fd.log_softmax(x, out=strided) is strided
    check(strided, x, log=True)
    assert np.all(big[:, 1::2] == 0), "wrote outside the out view"


def test_in_place(backend, rng):
    x = rng.standard_normal((4, 100)).astype(np.float32)
    expect = oracle(x)
    for log in (False, True):
        y = x.copy()
        (fd.log_softmax if log else fd.softmax)(y, out=y)
        np.testing.assert_allclose(y, oracle(x, log=log), rtol=1e-5, atol=2e-5 if log else 1e-6)
    assert np.isfinite(expect).all()


def test_float64_kept(backend, rng):
    x = rng.standard_normal((3, 1000))
    y = fd.softmax(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, oracle(x), rtol=1e-12, atol=1e-15)


def test_lists_and_1d(backend):
    y = fd.softmax([1.0, 2.0, 3.0])  # a list is float64, as np.asarray makes it
    np.testing.assert_allclose(y, oracle(np.array([1.0, 2.0, 3.0])), rtol=1e-12)


def test_empty(backend):
    assert fd.softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert fd.softmax(np.zeros((3, 0), np.float32)).shape == (3, 0)


def test_input_not_modified(backend, rng):
    x = rng.standard_normal((3, 50)).astype(np.float32)
    keep = x.copy()
    fd.softmax(x)
    fd.log_softmax(x)
    assert np.array_equal(x, keep)


# ---------------------------------------------------------------------------
# Special values
# ---------------------------------------------------------------------------

def test_special_values(backend):
    inf, nan = np.inf, np.nan
    x = np.array([
        [0.0, -inf, 1.0, -inf],       # -inf entries give 0
        [-inf, -inf, -inf, -inf],     # all -inf: NaN row (as NumPy/SciPy)
        [1.0, nan, 2.0, 3.0],         # NaN in: NaN row
        [1.0, inf, 2.0, 3.0],         # +inf: NaN row
        [1e30, -1e30, 1e30, 0.0],     # huge values: no overflow
        [-1e30, -1e30, -1e30, -1e30], # equal huge negatives: uniform
        [5.0, -inf, -inf, -inf],      # single survivor
    ], np.float32)
    y = fd.softmax(x)
    check(y, x)
    assert y[0, 1] == 0 and y[0, 3] == 0
    assert np.isnan(y[1:4]).all()
    np.testing.assert_allclose(y[4], [0.5, 0, 0.5, 0], atol=1e-7)
    np.testing.assert_allclose(y[5], [0.25] * 4, rtol=1e-6)
    assert y[6, 0] == 1.0 and (y[6, 1:] == 0).all()
    ly = fd.log_softmax(x)
    check(ly, x, log=True)
    assert np.isneginf(ly[0, [1, 3]]).all() and ly[6, 0] == 0.0


def test_tiny_differences_and_large_spread(backend, rng):
    x = (rng.standard_normal((2, 5000)) * 1e-6).astype(np.float32)
    check(fd.softmax(x), x)
    x = np.linspace(-200, 200, 4097, dtype=np.float32)[None]
    check(fd.softmax(x), x)
    check(fd.log_softmax(x), x, log=True)


@requires_c
def test_exp_ulp(simd):
    """Accuracy of the kernels' vectorized exp against float64: within 2 ulp
    on [-87.3, 88.37] (results stay normal floats), exactly 0 at -inf and far
    below. Above 88.37 the input is clamped: a softmax never gets there (x - max <= 0)."""
    from fastdecode import _native

    xs = np.concatenate([np.linspace(-87.3, 88.37, 400001, dtype=np.float32),
                         np.float32(np.random.default_rng(1).uniform(-10, 0, 100000))])
    got = np.empty_like(xs)
    _native.exp_f32(got, xs)
    exact = np.exp(xs.astype(np.float64))
    err_ulp = np.abs(got - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert err_ulp.max() <= 2.0, f"max error {err_ulp.max():.2f} ulp"
    tail = np.array([-np.inf, -1e30, -200.0, -104.0], np.float32)
    out = np.empty_like(tail)
    _native.exp_f32(out, tail)
    assert (out == 0).all()


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    np.arange(5),                                  # int
    np.ones(5, np.complex64),                      # complex
    np.ones(5, np.float16),                        # half: not a supported dtype
    np.ones(5, bool),
    np.array(["a", "b"]),
    np.array([1.0, None], dtype=object),
])
def test_bad_dtype(backend, bad):
    with pytest.raises(TypeError, match="x must have dtype"):
        fd.softmax(bad)


def test_bad_shapes_and_args(backend):
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        fd.softmax(np.float32(1.0))
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        fd.softmax(x, axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        fd.softmax(x, axis=1.5)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        fd.softmax(x, out=np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        fd.softmax(x, out=np.empty((2, 3), np.float64))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        fd.softmax(x, out=[[0.0] * 3] * 2)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        fd.softmax(x, out=ro)
    with pytest.raises(TypeError, match="x must be an array"):
        fd.softmax([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("log", [False, True])
def test_long_rows_blockwise(backend, rng, log):
    """Rows long enough for the C kernel's block-by-block pass (>= 65536):
    the max grows late, whole leading blocks are -inf, NaN in a late block."""
    n = 150_001
    x = (rng.standard_normal((4, n)) * 3).astype(np.float32)
    x[0, :10_000] = -np.inf                 # leading blocks masked
    x[1, -5] = 60.0                         # max in the last block: earlier terms rescaled
    x[2] = np.linspace(-80, 80, n)          # max grows in every block
    x[3, -100] = np.nan                     # undefined row
    y = fd.log_softmax(x) if log else fd.softmax(x)
    check(y, x, log=log)
    assert np.isnan(y[3]).all() and not np.isnan(y[:3]).any()
