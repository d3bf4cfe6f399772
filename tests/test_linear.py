"""ops.linear (x @ W.T + b, torch's layout): C kernel vs NumPy reference vs a
float64 oracle, every SIMD level, both paths (decode rows in C, prefill
rows through BLAS), threads, layouts, out=, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdecode
from conftest import requires_c
from fastdecode import ops
from fastdecode.reference import linear as ref_linear


def oracle(x, w, b):
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    return y if b is None else y + b


def assert_matches(got, x, w, b):
    """float32 sums of n_in terms: error bounded by n_in ulps of sum |x_i w_i| (with slack)."""
    want = oracle(x, w, b)
    assert got.shape == want.shape and got.dtype == x.dtype
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + (0 if b is None else np.abs(b))
    eps = np.finfo(x.dtype).eps
    np.testing.assert_array_less(np.abs(got - want), 4 * eps * (scale + 1e-30) * max(1, np.sqrt(x.shape[-1])) + 1e-30)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 12), n_in=st.integers(0, 70), n_out=st.integers(0, 40), with_bias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_parity_random_shapes(rows, n_in, n_out, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    b = rng.standard_normal(n_out, dtype=np.float32) if with_bias else None
    results = {}
    for name in fastdecode.backend_info()["available"]:
        with fastdecode.use_backend(name):
            results[name] = ops.linear(x, w, b)
        assert_matches(results[name], x, w, b)
    if len(results) == 2:  # the two backends agree to float32 rounding
        np.testing.assert_allclose(results["c"], results["numpy"], rtol=1e-5, atol=1e-5 * (np.sqrt(n_in) + 1))


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 33])
def test_every_simd_level_decode_shapes(simd, rows, rng):
    x = rng.standard_normal((rows, 777), dtype=np.float32)  # not a multiple of any vector width
    w = rng.standard_normal((301, 777), dtype=np.float32)
    b = rng.standard_normal(301, dtype=np.float32)
    assert_matches(ops.linear(x, w, b), x, w, b)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_split_a_large_weight(backend, threads, rng):
    x = rng.standard_normal((3, 1100), dtype=np.float32)
    w = rng.standard_normal((1000, 1100), dtype=np.float32)  # above the kernel's parallel threshold
    before = fastdecode.get_num_threads()
    fastdecode.set_num_threads(threads)
    try:
        got = ops.linear(x, w)
    finally:
        fastdecode.set_num_threads(before)
    assert_matches(got, x, w, None)


def test_shapes_layouts_and_out(backend, rng):
    w = rng.standard_normal((6, 5), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    x1 = rng.standard_normal(5, dtype=np.float32)
    assert ops.linear(x1, w, b).shape == (6,)
    x3 = rng.standard_normal((2, 3, 5), dtype=np.float32)
    assert_matches(ops.linear(x3, w, b).reshape(6, 6), x3.reshape(6, 5), w, b)
    xf = np.asfortranarray(rng.standard_normal((4, 5), dtype=np.float32))
    assert_matches(ops.linear(xf, w[:, ::-1], b[::2].repeat(2)), xf, w[:, ::-1], b[::2].repeat(2))
    out = np.empty((4, 6), np.float32)
    assert ops.linear(xf, w, b, out=out) is out
    assert_matches(out, xf, w, b)
    strided = np.empty((4, 12), np.float32)[:, ::2]
    ops.linear(xf, w, b, out=strided)
    assert_matches(strided, xf, w, b)
    x64 = xf.astype(np.float64)
    assert ops.linear(x64, w.astype(np.float64)).dtype == np.float64
    np.testing.assert_allclose(ops.linear(x64, w.astype(np.float64)), ref_linear.linear(x64, w.astype(np.float64)))


def test_out_may_alias_x(backend, rng):
    w = rng.standard_normal((5, 5), dtype=np.float32)
    x = rng.standard_normal((3, 5), dtype=np.float32)
    want = oracle(x, w, None)
    ops.linear(x, w, out=x)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)


def test_special_values_propagate(backend):
    w = np.ones((2, 20), np.float32)
    x = np.zeros((1, 20), np.float32)
    x[0, 3] = np.nan
    assert np.isnan(ops.linear(x, w)).all()
    x[0, 3] = np.inf
    assert np.isposinf(ops.linear(x, w)).all()


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.ones((2, 3), np.float32), np.ones((4, 5), np.float32)), {}, ValueError, "features"),
    ((np.ones((2, 3), np.float32), np.ones((4, 3), np.float64)), {}, TypeError, "one dtype"),
    ((np.ones((2, 3), np.float32), np.ones(3, np.float32)), {}, ValueError, "weight"),
    ((np.ones((2, 3), np.int32), np.ones((4, 3), np.float32)), {}, TypeError, "x"),
    ((np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(5, np.float32)), {}, ValueError, "bias"),
    ((np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(4, np.float64)), {}, TypeError, "bias"),
    ((np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)), {"out": np.ones((2, 5), np.float32)},
     ValueError, "out"),
])
def test_bad_input(backend, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.linear(*args, **kwargs)


@requires_c
def test_benchmark_cases_build_and_run(monkeypatch):
    from fastdecode.benchmarks import linear as bench

    monkeypatch.setattr(bench, "QUICK", [(2, 16, 24)])
    monkeypatch.setattr(bench, "STREAM_BYTES", 4 * 16 * 24 * 3)  # three copies, cycled
    (case,) = bench.float_cases(quick=True)
    results = {name: fn() for name, fn in case.contenders.items()}
    assert {"fastdecode-c", "numpy x@W.T", "numpy x@W[in,out]"} <= set(results)
    for name, got in results.items():
        assert tuple(got.shape) == (2, 24), name
