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
from fuzzing import count, junk_arrays, shapes, snapshot, unchanged
from test_attention import check as check_attention
from test_norm import assert_matches as assert_norm_matches
from test_norm import oracle as norm_oracle
from test_softmax import oracle

BACKENDS = ["numpy", "c"] if HAVE_C else ["numpy"]
# junk input makes NumPy warn (casts, invalid values); the assertions are the point
pytestmark = pytest.mark.filterwarnings("ignore")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def tame(*arrays) -> bool:
    """Every value finite, and 0 or of magnitude in [1e-15, 1e15]: no float32
    product or sum of squares overflows or underflows, so a float64 oracle
    gives the one right answer."""
    for a in arrays:
        if a is None:
            continue
        m = np.abs(np.asarray(a, np.float64))
        if not np.isfinite(m).all() or ((m != 0) & ((m < 1e-15) | (m > 1e15))).any():
            return False
    return True


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
        if tame(q, k, v) and np.max(np.abs(q), initial=0) * np.max(np.abs(k), initial=0) * q.shape[-1] \
                * abs(1.0 if scale is None else scale) < 1e30:  # no score overflows: one right answer
            check_attention(y, q, k, v, causal, scale, lengths)
        if backend == "c" and np.isfinite(q).all() and np.isfinite(k).all() and np.isfinite(v).all():
            with fd.use_backend("numpy"):
                ref = fd.attention(q, k, v, causal=causal, scale=scale, lengths=lengths)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# sampling: sample, argmax, process_logits, apply_repetition_penalty
# ---------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300),
                    st.sampled_from(["0.5", [0.5], [[1.0]], np.float32(0.3), True]))


@st.composite
def logits_args(draw):
    if draw(st.integers(0, 3)) == 0:
        logits = draw(junk_arrays())
    else:
        rows, vocab = draw(st.integers(0, 3)), draw(st.integers(0, 70))
        shape = draw(st.sampled_from([(rows, vocab), (vocab,)]))
        logits = draw(junk_arrays(float_bias=0.9, shape=shape))
    kw = {}
    for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        if draw(st.booleans()):
            kw[key] = draw(SCALARS)
    if draw(st.booleans()):
        kw["prev_tokens"] = draw(st.one_of(
            st.lists(st.integers(-3, 80), max_size=6),
            st.lists(st.lists(st.integers(-3, 80), max_size=4), max_size=4),
            junk_arrays()))
    return logits, kw


SAMPLING_ARGS = ["logits", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "prev_tokens",
                 "do_sample", "rng", "penalty", "out"]


@FUZZ
@given(args=logits_args(), do_sample=st.sampled_from([None, True, False, "yes"]),
       rng=st.sampled_from([None, 0, 7, -1, "seed", np.random.default_rng(1)]),
       backend=st.sampled_from(BACKENDS))
def test_fuzz_sample(args, do_sample, rng, backend):
    count("sample")
    logits, kw = args
    snap = snapshot(logits, kw.get("prev_tokens"))
    with fd.use_backend(backend):
        ids = expect_clean(fd.sample, SAMPLING_ARGS, logits, do_sample=do_sample,
                           rng=rng if not isinstance(rng, np.random.Generator) else np.random.default_rng(1), **kw)
    assert unchanged(snap), "an input was modified"
    if ids is not None:
        x = np.asarray(logits)
        ids_arr = np.atleast_1d(np.asarray(ids))
        assert ids_arr.dtype.kind == "i" and ids_arr.shape == (1 if x.ndim == 1 else x.shape[0],)
        assert ((ids_arr >= 0) & (ids_arr < x.shape[-1])).all()
        rows = x.reshape(-1, x.shape[-1])
        assert all(np.isfinite(rows[r, i]) or rows[r, i] > -np.inf for r, i in enumerate(ids_arr)), \
            "a masked (-inf) token was drawn"
        if backend == "c" and isinstance(rng, int):  # a seed: the same u for both backends
            with fd.use_backend("numpy"):
                ref = fd.sample(logits, do_sample=do_sample, rng=rng, **kw)
            assert np.array_equal(np.asarray(ids), np.asarray(ref))


@settings(max_examples=900, deadline=None, suppress_health_check=list(HealthCheck))  # ~300 per function
@given(args=logits_args(), backend=st.sampled_from(BACKENDS), which=st.integers(0, 2))
def test_fuzz_argmax_process_penalty(args, backend, which):
    logits, kw = args
    snap = snapshot(logits, kw.get("prev_tokens"))
    with fd.use_backend(backend):
        if which == 0:
            count("argmax")
            got = expect_clean(fd.argmax, ["logits"], logits)
        elif which == 1:
            count("process_logits")
            got = expect_clean(fd.process_logits, SAMPLING_ARGS + ["return_probs"], logits, **kw)
        else:
            count("apply_repetition_penalty")
            got = expect_clean(fd.apply_repetition_penalty, SAMPLING_ARGS, logits, kw.get("prev_tokens"),
                               kw.get("repetition_penalty", 1.3))
    assert unchanged(snap), "an input was modified"
    if got is not None and backend == "c":
        with fd.use_backend("numpy"):
            ref = [lambda: fd.argmax(logits), lambda: fd.process_logits(logits, **kw),
                   lambda: fd.apply_repetition_penalty(logits, kw.get("prev_tokens"),
                                                       kw.get("repetition_penalty", 1.3))][which]()
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64),
                                   rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# load and generate
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from model_checkpoints import checkpoint

    return fd.load(checkpoint("llama-gqa-tied"))


LOAD_JUNK = [None, 3, "", "/", "/definitely/not/here", "default\x00", b"bytes", ["a"], "/etc/passwd", "/proc"]


@settings(max_examples=100, deadline=None)
@given(path=st.one_of(st.sampled_from(LOAD_JUNK), st.text(max_size=20), st.binary(max_size=10)))
def test_fuzz_load(path):
    count("load")
    try:
        fd.load(path)
    except (TypeError, ValueError, OSError) as exc:
        assert str(exc), "an empty error message"
    else:
        pytest.fail(f"load({path!r}) returned a model")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(prompt=st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 600), max_size=8), st.none(),
                        st.integers(), st.lists(st.text(max_size=5), max_size=3)),
       max_new_tokens=st.one_of(st.integers(-2, 6), st.sampled_from([None, 2.5, "3", 10**12])),
       temperature=st.sampled_from([None, 0.0, 0.7, -1.0, np.nan]),
       top_p=st.sampled_from([None, 0.9, 0.0, 1.5]),
       stop=st.sampled_from([None, "\n", ["a", 5], 10**9, [None]]),
       backend=st.sampled_from(BACKENDS))
def test_fuzz_generate(tiny_model, prompt, max_new_tokens, temperature, top_p, stop, backend):
    count("generate")
    kw = {k: v for k, v in dict(temperature=temperature, top_p=top_p, stop=stop).items() if v is not None}
    snap = snapshot(np.asarray(prompt)) if isinstance(prompt, list) and prompt else []
    with fd.use_backend(backend):
        try:
            out = tiny_model.generate(prompt, max_new_tokens=max_new_tokens, rng=0, **kw)
        except (TypeError, ValueError) as exc:
            assert str(exc)
            return
    assert unchanged(snap)
    results = out if isinstance(out, list) else [out]
    for r in results:
        assert isinstance(r.text, str) and len(r.token_ids) <= max_new_tokens
    if backend == "c":  # the same seed draws the same u: the NumPy backend must pick the same tokens
        with fd.use_backend("numpy"):
            ref = tiny_model.generate(prompt, max_new_tokens=max_new_tokens, rng=0, **kw)
        ref = ref if isinstance(ref, list) else [ref]
        assert [(r.token_ids, r.text) for r in results] == [(r.token_ids, r.text) for r in ref]


# ---------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------

@st.composite
def linear_args(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(junk_arrays()), draw(junk_arrays()), draw(st.one_of(st.none(), junk_arrays()))
    rows, n_in, n_out = draw(st.integers(0, 10)), draw(st.integers(0, 40)), draw(st.integers(0, 20))
    x = draw(junk_arrays(float_bias=1.0, shape=draw(st.sampled_from([(rows, n_in), (n_in,), (2, rows, n_in)]))))
    w = draw(junk_arrays(float_bias=1.0, shape=(n_out, n_in + draw(st.sampled_from([0, 0, 0, 1])))))
    b = draw(st.one_of(st.none(), junk_arrays(float_bias=1.0, shape=(n_out + draw(st.sampled_from([0, 0, -1])),)
                                              if n_out else (0,))))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.int32]))
    return x.astype(dtype), w.astype(dtype), (b if b is None else b.astype(dtype))


@FUZZ
@given(args=linear_args(), backend=st.sampled_from(BACKENDS))
def test_fuzz_linear(args, backend):
    count("linear")
    x, w, b = args
    snap = snapshot(x, w, b)
    with fd.use_backend(backend):
        y = expect_clean(fd.linear, ["x", "weight", "bias", "out"], x, w, b)
    assert unchanged(snap), "an input was modified"
    if y is not None and np.isfinite(x).all() and np.isfinite(w).all() and (b is None or np.isfinite(b).all()):
        x64, w64, b64 = (None if a is None else np.asarray(a, np.float64) for a in (x, w, b))
        # where a sum of |terms| passes the output dtype's range, a partial sum may overflow to inf
        # (x = 2^127, w = 2: float32 gives inf, float64 2^128): no single right answer to compare with
        bound = np.abs(x64) @ np.abs(w64).T + (0 if b64 is None else np.abs(b64))
        if np.abs(bound).max(initial=0) < np.finfo(y.dtype).max:
            ref = x64 @ w64.T + (0 if b64 is None else b64)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3 * (1 + np.abs(ref).max(initial=0)))


# ---------------------------------------------------------------------------
# layer_norm, rms_norm
# ---------------------------------------------------------------------------

@st.composite
def norm_args(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(junk_arrays()), draw(st.one_of(st.none(), junk_arrays())), draw(st.one_of(st.none(), junk_arrays()))
    shape = draw(shapes(max_rank=3))
    n = shape[-1] if shape else 1
    x = draw(junk_arrays(float_bias=1.0, shape=shape))
    w, b = (draw(st.one_of(st.none(), junk_arrays(float_bias=1.0, shape=(n + draw(st.sampled_from([0, 0, 1])),))))
            for _ in range(2))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.int32]))
    return tuple(a if a is None else a.astype(dtype) for a in (x, w, b))


@FUZZ
@given(args=norm_args(), rms=st.booleans(), eps=st.sampled_from([1e-5, 0.0, -1.0, float("nan"), "x", None]),
       backend=st.sampled_from(BACKENDS))
def test_fuzz_norms(args, rms, eps, backend):
    count("layer_norm/rms_norm")
    x, w, b = args
    snap = snapshot(x, w, b)
    with fd.use_backend(backend):
        if rms:
            y = expect_clean(fd.rms_norm, ["x", "weight", "eps", "out"], x, w, eps)
        else:
            y = expect_clean(fd.layer_norm, ["x", "weight", "bias", "eps", "out"], x, w, b, eps)
    assert unchanged(snap), "an input was modified"
    if y is not None:
        assert y.shape == np.shape(x) and y.dtype == np.asarray(x).dtype
        bias = None if rms else b  # rms_norm never sees b (junk there is not its input)
        if tame(x, w, bias) and y.size:
            x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])
            ok = np.isfinite(norm_oracle(x2, w, bias, eps, rms)).all(axis=-1)  # eps 0 on a constant row: NaN
            assert_norm_matches(y2[ok], x2[ok], w, bias, eps, rms)


# ---------------------------------------------------------------------------
# QuantizedTensor and linear on it: any bytes are blocks (NaN/inf scales
# included), any byte count or shape that does not fit is refused
# ---------------------------------------------------------------------------

@st.composite
def quantized_args(draw):
    from fastdecode import formats

    fmt = draw(st.sampled_from(list(formats.FORMATS)))
    info = formats.FORMATS[fmt]
    n_out, n_blocks = draw(st.one_of(st.integers(0, 9), st.sampled_from([16, 19, 33]))), draw(st.integers(0, 3))
    n_in = n_blocks * info.block + draw(st.sampled_from([0, 0, 0, 1, 16]))
    nbytes = n_out * (n_in // info.block) * info.block_bytes + draw(st.sampled_from([0, 0, 0, -1, 1, 34]))
    data = np.frombuffer(draw(st.binary(min_size=max(nbytes, 0), max_size=max(nbytes, 0))), np.uint8)
    if draw(st.integers(0, 5)) == 0:
        data = data.view(np.int8) if data.size else np.zeros(3, np.float32)
    rows = draw(st.integers(0, 10))
    x = draw(junk_arrays(float_bias=0.9, shape=draw(st.sampled_from([(rows, n_in), (n_in,), (rows, n_in + 1)]))))
    b = draw(st.one_of(st.none(), junk_arrays(float_bias=0.9, shape=(n_out + draw(st.sampled_from([0, 0, 1])),))))
    ids = draw(st.lists(st.integers(-n_out - 2, n_out + 1), max_size=4))
    return fmt, (n_out, n_in), data, x, b, draw(st.booleans()), np.array(ids, np.int64)


@FUZZ
@given(args=quantized_args(), backend=st.sampled_from(BACKENDS))
def test_fuzz_quantized_linear(args, backend):
    """Also repacked (16 rows interleaved, where the C backend has the
    layout) and looked up by row ids (out of range: IndexError)."""
    count("linear(QuantizedTensor)")
    fmt, shape, data, x, b, repack, ids = args
    qt = expect_clean(fd.QuantizedTensor, ["format", "shape", "data", "in"], fmt, shape, data)
    if qt is None:
        return
    snap = snapshot(x, b, qt.data)
    if repack:
        qt.repack()
    with fd.use_backend(backend):
        y = expect_clean(fd.linear, ["x", "weight", "bias", "out"], x, qt, b)
        try:
            rows = qt[ids]
        except IndexError:
            assert ids.size and (ids.min() < -shape[0] or ids.max() >= shape[0])
        else:
            assert rows.shape == ids.shape + (shape[1],) and rows.dtype == np.float32
    assert unchanged(snap), "an input was modified"
    if y is not None:
        assert y.shape == np.asarray(x).shape[:-1] + (shape[0],) and y.dtype == np.float32
