"""Malformed input at every public function: each call returns a correct
result or raises TypeError/ValueError naming an argument; the interpreter
never crashes and the inputs are never modified. Counts of inputs tried per
function are printed at the end of the run (conftest.pytest_terminal_summary).
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdecode as fd
from conftest import HAVE_C
from fuzzing import count, junk_arrays, snapshot, unchanged
from test_softmax import oracle

BACKENDS = ["numpy", "c"] if HAVE_C else ["numpy"]
# junk input makes NumPy warn (casts, invalid values); the assertions are the point
pytestmark = pytest.mark.filterwarnings("ignore")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def expect_clean(fn, argnames, *args, **kwargs):
    """Call fn; return its result, or None when it raised a clear error."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        names = "|".join(map(re.escape, argnames))
        assert re.search(rf"(^|[^A-Za-z_])({names})([^A-Za-z_]|$)", msg), f"message names no argument: {msg!r}"
        return None


# ---------------------------------------------------------------------------
# softmax / log_softmax
# ---------------------------------------------------------------------------

@FUZZ
@given(x=junk_arrays(), axis=st.one_of(st.integers(-40, 40), st.sampled_from([None, 1.5, "0", np.int64(1)])),
       out_kind=st.integers(0, 4), log=st.booleans(), backend=st.sampled_from(BACKENDS))
def test_fuzz_softmax(x, axis, out_kind, log, backend):
    name = "log_softmax" if log else "softmax"
    count(name)
    out = None
    if out_kind == 1 and isinstance(x, np.ndarray):
        out = np.empty_like(x)
    elif out_kind == 2 and isinstance(x, np.ndarray):
        out = np.empty(x.shape[::-1] + (1,), np.float32)
    elif out_kind == 3:
        out = [0.0]
    snap = snapshot(x)
    with fd.use_backend(backend):
        y = expect_clean(getattr(fd, name), ["x", "axis", "out"], x, axis=axis, out=out)
    assert unchanged(snap), "the input was modified"
    if y is not None:
        xa = np.asarray(x)
        assert y.shape == xa.shape and y.dtype == xa.dtype
        ref = oracle(xa, axis=axis, log=log)
        assert np.array_equal(np.isnan(y), np.isnan(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------

@st.composite
def attention_args(draw):
    """Mostly near-valid shapes (so the C path runs), sometimes junk."""
    if draw(st.integers(0, 3)) == 0:
        return draw(junk_arrays()), draw(junk_arrays()), draw(junk_arrays()), None
    b, hkv, g = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(1, 3))
    tq, tk, d = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 9))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.int32]))
    q = draw(junk_arrays(float_bias=1.0, shape=(b, hkv * g + draw(st.integers(0, 1)), tq, d))).astype(dtype)
    k = draw(junk_arrays(float_bias=1.0, shape=(b, hkv, tk, d))).astype(dtype)
    v = draw(junk_arrays(float_bias=1.0, shape=(b, hkv, tk + draw(st.integers(-1, 1)) if tk else 0, d)))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(-2, tk + 2), min_size=b, max_size=b),
                             st.sampled_from([[1.5], "x", [[1]]])))
    return q, k, v.astype(dtype, copy=False), lengths


@FUZZ
@given(args=attention_args(), causal=st.booleans(),
       scale=st.sampled_from([None, 0.5, 0.0, -1.0, np.inf, np.nan, "s"]), backend=st.sampled_from(BACKENDS))
def test_fuzz_attention(args, causal, scale, backend):
    count("attention")
    q, k, v, lengths = args
    snap = snapshot(q, k, v)
    with fd.use_backend(backend):
        y = expect_clean(fd.attention, ["q", "k", "v", "lengths", "scale", "out"], q, k, v,
                         causal=causal, scale=scale, lengths=lengths)
    assert unchanged(snap), "an input was modified"
    if y is not None:
        assert y.shape == np.shape(q)
        if backend == "c" and np.isfinite(q).all() and np.isfinite(k).all() and np.isfinite(v).all():
            with fd.use_backend("numpy"):
                ref = fd.attention(q, k, v, causal=causal, scale=scale, lengths=lengths)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
