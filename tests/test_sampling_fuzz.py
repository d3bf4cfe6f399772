"""Malformed and extreme input at the sampling functions: each call returns
a valid result or raises TypeError/ValueError naming an argument; the
interpreter never crashes, the inputs are never modified, and both
backends agree on which inputs are bad."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdecode as fd
from fuzzing import count, junk_arrays, snapshot, unchanged
from test_fuzz import BACKENDS, expect_clean

pytestmark = pytest.mark.filterwarnings("ignore")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
SETTING_NAMES = ["logits", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "prev_tokens",
                 "do_sample", "rng", "out", "penalty"]

junk_scalars = st.sampled_from([None, 0, 1, -1, 0.5, 1.5, -0.5, 2**70, np.nan, np.inf, -np.inf, "x", [0.5], True,
                                np.float32(0.9), np.int64(3), 1e-40, 3e38])


@FUZZ
@given(x=junk_arrays(), temperature=junk_scalars, top_k=junk_scalars, top_p=junk_scalars, min_p=junk_scalars,
       penalty=junk_scalars, prev=st.one_of(junk_arrays(float_bias=0.2), st.just([[0, 1], [2]])),
       do_sample=st.sampled_from([None, True, False, 1]), backend=st.sampled_from(BACKENDS))
def test_fuzz_sample(x, temperature, top_k, top_p, min_p, penalty, prev, do_sample, backend):
    count("sample")
    snap = snapshot(x, prev)
    with fd.use_backend(backend):
        ids = expect_clean(fd.sample, SETTING_NAMES, x, temperature=temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p, repetition_penalty=penalty, prev_tokens=prev, do_sample=do_sample, rng=1)
        probs = expect_clean(fd.process_logits, SETTING_NAMES, x, temperature=temperature, top_k=top_k,
                             top_p=top_p, min_p=min_p, repetition_penalty=penalty, prev_tokens=prev,
                             return_probs=True)
    assert unchanged(snap)
    if ids is not None:
        vocab = x.shape[-1]
        assert np.all((0 <= np.asarray(ids)) & (np.asarray(ids) < vocab))
    if probs is not None:
        assert probs.shape == x.shape and np.all(probs >= 0)
        assert np.allclose(probs.reshape(-1, x.shape[-1]).sum(axis=1), 1.0, atol=1e-5)


@FUZZ
@given(x=junk_arrays(), prev=st.one_of(junk_arrays(float_bias=0.1), st.just([[1], [0]])),
       penalty=junk_scalars, backend=st.sampled_from(BACKENDS))
def test_fuzz_argmax_and_penalty(x, prev, penalty, backend):
    count("argmax / apply_repetition_penalty")
    snap = snapshot(x, prev)
    with fd.use_backend(backend):
        ids = expect_clean(fd.argmax, SETTING_NAMES, x)
        out = expect_clean(fd.apply_repetition_penalty, SETTING_NAMES, x, prev, penalty)
    assert unchanged(snap)
    if ids is not None:
        np.testing.assert_array_equal(ids, np.argmax(x, axis=-1))
    if out is not None:
        assert out.shape == x.shape and out.dtype == x.dtype


EXTREMES = [0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 3e38, -3e38, 1e30, -1e30, -np.inf]


@FUZZ
@given(data=st.data(), rows=st.integers(1, 3), vocab=st.integers(1, 70),
       temperature=st.sampled_from([0.0, 1e-30, 1e-3, 0.5, 1.0, 7.0, 3e38]),
       top_k=st.sampled_from([None, 1, 3, 69]), top_p=st.sampled_from([None, 1e-12, 0.5, 0.999999, 1.0]),
       min_p=st.sampled_from([None, 0.0, 1e-30, 0.5, 1.0]), penalty=st.sampled_from([None, 1e-20, 0.5, 3.0, 1e20]))
def test_backends_agree_on_extreme_values(data, rows, vocab, temperature, top_k, top_p, min_p, penalty):
    count("sample (extreme values)")
    x = np.array(data.draw(st.lists(st.sampled_from(EXTREMES), min_size=rows * vocab, max_size=rows * vocab)),
                 np.float32).reshape(rows, vocab)
    prev = [data.draw(st.lists(st.integers(0, vocab - 1), max_size=5)) for _ in range(rows)]
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=penalty,
              prev_tokens=prev)
    results = {}
    for backend in BACKENDS:
        with fd.use_backend(backend):
            try:
                results[backend] = fd.process_logits(x, **kw)
            except ValueError as exc:
                results[backend] = str(exc)
    if len(results) == 2:
        a, b = results["numpy"], results["c"]
        if isinstance(a, str) or isinstance(b, str):
            assert a == b
        else:
            np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
