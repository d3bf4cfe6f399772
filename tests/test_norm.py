"""ops.layer_norm and ops.rms_norm: C kernel vs NumPy reference vs a float64
oracle (and torch), every SIMD level, shapes, layouts, out=, in place, bad
input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdecode
from fastdecode import ops


def oracle(x, w, b, eps, rms):
    x = x.astype(np.float64)
    if rms:
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    else:
        xc = x - x.mean(axis=-1, keepdims=True)
        y = xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + eps)
    y = y * (1.0 if w is None else w)
    return y if b is None else y + b


def assert_matches(got, x, w, b, eps, rms):
    """float32 arithmetic on normalized values of size ~1: a few ulps of
    |x_hat * w| + |b| (the sums' rounding adds ~sqrt(n) ulps to the
    statistics), plus, for LayerNorm, the conditioning of x - mean: a mean
    rounded to float32 (the NumPy reference sums in float32) is off by
    ulp(|mean|), which is |mean| / std ulps of x_hat."""
    want = oracle(x, w, b, eps, rms)
    assert got.shape == want.shape and got.dtype == x.dtype
    xhat = oracle(x, None, None, eps, rms)
    x64 = x.astype(np.float64)
    cond = 0.0 if rms else np.abs(x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + eps)
    scale = (np.abs(xhat) + cond) * (1.0 if w is None else np.abs(w)) + (0.0 if b is None else np.abs(b))
    tol = 16 * np.finfo(x.dtype).eps * (scale + np.abs(want).max(initial=0) * 1e-3 + 1e-30) * np.sqrt(x.shape[-1] + 1)
    np.testing.assert_array_less(np.abs(got - want), tol + 1e-30)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 5), n=st.integers(1, 300), rms=st.booleans(), with_bias=st.booleans(),
       shift=st.sampled_from([0.0, 3.0, -100.0]), eps=st.sampled_from([1e-5, 1e-6, 0.1]), seed=st.integers(0, 2**32 - 1))
def test_parity_random_shapes(rows, n, rms, with_bias, shift, eps, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 2 + shift).astype(np.float32)
    w = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if with_bias and not rms else None
    results = {}
    for name in fastdecode.backend_info()["available"]:
        with fastdecode.use_backend(name):
            results[name] = ops.rms_norm(x, w, eps) if rms else ops.layer_norm(x, w, b, eps)
        assert_matches(results[name], x, w, b, eps, rms)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 768, 777, 4096])
def test_every_simd_level(simd, rms, n, rng):
    x = rng.standard_normal((3, n), dtype=np.float32) + 0.5
    w = rng.standard_normal(n, dtype=np.float32)
    b = None if rms else rng.standard_normal(n, dtype=np.float32)
    got = ops.rms_norm(x, w, 1e-6) if rms else ops.layer_norm(x, w, b, 1e-5)
    assert_matches(got, x, w, b, 1e-6 if rms else 1e-5, rms)


def test_matches_torch(backend, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 5, 768), dtype=np.float32) * 3 + 1
    w = rng.standard_normal(768, dtype=np.float32)
    b = rng.standard_normal(768, dtype=np.float32)
    t = torch.nn.functional
    want = t.layer_norm(torch.from_numpy(x), (768,), torch.from_numpy(w), torch.from_numpy(b), 1e-5).numpy()
    np.testing.assert_allclose(ops.layer_norm(x, w, b, 1e-5), want, rtol=1e-4, atol=1e-5)
    want = t.rms_norm(torch.from_numpy(x), (768,), torch.from_numpy(w), 1e-6).numpy()
    np.testing.assert_allclose(ops.rms_norm(x, w, 1e-6), want, rtol=1e-4, atol=1e-5)


def test_shapes_layouts_out_and_in_place(backend, rng):
    x = rng.standard_normal((4, 6, 10), dtype=np.float32)
    w = rng.standard_normal(10, dtype=np.float32)
    b = rng.standard_normal(10, dtype=np.float32)
    want = oracle(x, w, b, 1e-5, False)
    np.testing.assert_allclose(ops.layer_norm(x, w, b), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.layer_norm(x[:, ::2, ::-1], w, b), oracle(x[:, ::2, ::-1], w, b, 1e-5, False),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.layer_norm(x[0, 0]), oracle(x[0, 0], None, None, 1e-5, False), rtol=1e-5, atol=1e-5)
    out = np.empty_like(x)
    assert ops.rms_norm(x, w, out=out) is out
    np.testing.assert_allclose(out, oracle(x, w, None, 1e-6, True), rtol=1e-5, atol=1e-5)
    inplace = x.copy()
    assert ops.layer_norm(inplace, w, b, out=inplace) is inplace
    np.testing.assert_allclose(inplace, want, rtol=1e-5, atol=1e-5)
    shifted = np.concatenate([x.reshape(-1, 10), x[:1, 0]])  # out overlaps x one row further on
    ops.layer_norm(shifted[:-1], w, b, out=shifted[1:])
    np.testing.assert_allclose(shifted[1:], want.reshape(-1, 10), rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    assert ops.layer_norm(x64, w.astype(np.float64), b.astype(np.float64)).dtype == np.float64
    assert ops.layer_norm(np.empty((0, 10), np.float32), w).shape == (0, 10)


def test_constant_rows_and_nan(backend):
    x = np.full((2, 33), 7.0, np.float32)
    np.testing.assert_array_equal(ops.layer_norm(x, bias=np.arange(33, dtype=np.float32)),
                                  np.tile(np.arange(33, dtype=np.float32), (2, 1)))  # x - mean = 0: the bias
    x[1, 5] = np.nan
    y = ops.rms_norm(x)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()


@pytest.mark.parametrize("call, err, match", [
    (lambda: ops.layer_norm(np.ones((2, 3), np.int32)), TypeError, "x must have dtype"),
    (lambda: ops.layer_norm(np.float32(1.0)), ValueError, "x must have at least 1"),
    (lambda: ops.layer_norm(np.ones((2, 3), np.float32), np.ones(4, np.float32)), ValueError, r"weight must have shape \(3,\)"),
    (lambda: ops.layer_norm(np.ones((2, 3), np.float32), np.ones(3)), TypeError, "weight must have x's dtype"),
    (lambda: ops.layer_norm(np.ones((2, 3), np.float32), None, np.ones((3, 1), np.float32)), ValueError,
     "bias must have at most 1"),
    (lambda: ops.rms_norm(np.ones((2, 3), np.float32), eps=-1.0), ValueError, "eps must be a finite number"),
    (lambda: ops.rms_norm(np.ones((2, 3), np.float32), eps=float("nan")), ValueError, "eps must be a finite number"),
    (lambda: ops.rms_norm(np.ones((2, 3), np.float32), eps="1e-6"), ValueError, "eps must be a finite number"),
    (lambda: ops.rms_norm(np.ones((2, 3), np.float32), out=np.empty((3, 2), np.float32)), ValueError,
     r"out must have shape \(2, 3\)"),
])
def test_bad_input(backend, call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_c_keeps_the_digits_of_rows_far_from_zero(simd, rng):
    # |mean| / std = 1e5: a float32 mean costs the NumPy reference ~1e-2 here;
    # C subtracts the mean as two floats and stays within a few ulps
    if "c" not in fastdecode.backend_info()["available"]:
        pytest.skip("needs the C backend")
    x = (1000 + rng.standard_normal((4, 777)) * 0.01).astype(np.float32)
    w = rng.standard_normal(777, dtype=np.float32)
    with fastdecode.use_backend("c"):
        got = ops.layer_norm(x, w)
    np.testing.assert_allclose(got, oracle(x, w, None, 1e-5, False), rtol=0, atol=2e-5 * np.abs(w).max())
