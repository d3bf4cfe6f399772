"""``out=`` that overlaps an input, every public function that takes ``out=``,
both backends. NumPy's rule: the result is as if every input were copied
before anything is written (issue 18, item 1). Each case places an input and
``out`` in one buffer one element apart, and compares with the same call on
copies of the inputs.
"""
import numpy as np
import pytest

import fastdecode as fd


def _buffer(rng, n):  # a float32 buffer of n + 1 elements: views 0..n-1 and 1..n overlap
    return rng.standard_normal(n + 1).astype(np.float32)


def _views(buf, in_shape, out_shape, shift):
    """An input view at buf[0:] and an out view at buf[shift:] (shift may be negative:
    then out comes first)."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    a, o = (0, shift) if shift >= 0 else (-shift, 0)
    return buf[a:a + n_in].reshape(in_shape), buf[o:o + n_out].reshape(out_shape)


def _check(call, inputs, which, out_shape, rng, shift):
    """call(*inputs, out=...) where inputs[which] and out share one buffer."""
    shape = inputs[which].shape
    buf = _buffer(rng, max(int(np.prod(shape)), int(np.prod(out_shape))) + abs(shift))
    x, out = _views(buf, shape, out_shape, shift)
    x[...] = inputs[which]
    args = list(inputs)
    args[which] = x
    want = call(*[a.copy() for a in args])  # inputs copied first, out=None
    got = call(*args, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)


SHIFTS = [1, -1, 3]


def _logits(rng, rows=3, vocab=257):
    return (2 * rng.standard_normal((rows, vocab))).astype(np.float32)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_out_overlaps_x(backend, rng, log, shift):
    fn = fd.log_softmax if log else fd.softmax
    _check(lambda x, out=None: fn(x, out=out), [_logits(rng, 1, 1000)], 0, (1, 1000), rng, shift)
    _check(lambda x, out=None: fn(x, out=out), [_logits(rng, 4, 100)], 0, (4, 100), rng, shift)


def test_softmax_issue_example(backend):
    rng = np.random.default_rng(0)
    b = rng.standard_normal(1001).astype(np.float32)
    want = fd.softmax(b[:1000].reshape(1, -1).copy())
    fd.softmax(b[:1000].reshape(1, -1), out=b[1:].reshape(1, -1))
    np.testing.assert_array_equal(b[1:].reshape(1, -1), want)


@pytest.mark.parametrize("shift", SHIFTS)
def test_softmax_other_axis_out_overlaps_x(backend, rng, shift):
    _check(lambda x, out=None: fd.softmax(x, axis=0, out=out), [_logits(rng, 5, 40)], 0, (5, 40), rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("which", [0, 1, 2])  # x, weight, bias
@pytest.mark.parametrize("rows", [2, 12])  # the C kernel's rows and BLAS's
def test_linear_out_overlaps_input(backend, rng, which, rows, shift):
    x = rng.standard_normal((rows, 24)).astype(np.float32)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    _check(lambda x, w, b, out=None: fd.linear(x, w, b, out=out), [x, w, b], which, (rows, 16), rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("which", [0, 1, 2])  # q, k, v
def test_attention_out_overlaps_input(backend, rng, which, shift):
    q = rng.standard_normal((2, 4, 3, 16)).astype(np.float32)
    k = rng.standard_normal((2, 4, 3, 16)).astype(np.float32)
    v = rng.standard_normal((2, 4, 3, 16)).astype(np.float32)
    _check(lambda q, k, v, out=None: fd.attention(q, k, v, out=out), [q, k, v], which, q.shape, rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("which", [0, 1, 2])  # x, weight, bias
def test_layer_norm_out_overlaps_input(backend, rng, which, shift):
    x = rng.standard_normal((5, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    _check(lambda x, w, b, out=None: fd.layer_norm(x, w, b, out=out), [x, w, b], which, x.shape, rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("which", [0, 1])  # x, weight
def test_rms_norm_out_overlaps_input(backend, rng, which, shift):
    x = rng.standard_normal((5, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    _check(lambda x, w, out=None: fd.rms_norm(x, w, out=out), [x, w], which, x.shape, rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("filters", [False, True])  # without filters every written value is one a later row reads
def test_process_logits_out_overlaps_logits(backend, rng, probs, filters, shift):
    kw = dict(top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3,
              prev_tokens=rng.integers(0, 257, (3, 9))) if filters else {}
    _check(lambda x, out=None: fd.process_logits(x, temperature=0.7, return_probs=probs, out=out, **kw),
           [_logits(rng)], 0, (3, 257), rng, shift)


@pytest.mark.parametrize("shift", SHIFTS)
def test_apply_repetition_penalty_out_overlaps_logits(backend, rng, shift):
    prev = rng.integers(0, 257, (3, 40))
    _check(lambda x, out=None: fd.apply_repetition_penalty(x, prev, 1.5, out=out), [_logits(rng)], 0,
           (3, 257), rng, shift)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "process_logits", "apply_repetition_penalty",
                                  "layer_norm", "rms_norm"])
def test_out_is_the_input_in_place(backend, rng, name):
    """The exact alias (out is x) stays allowed and right: the row kernels run in place."""
    x = _logits(rng)
    prev = rng.integers(0, 257, (3, 5))
    calls = {"softmax": lambda x, out=None: fd.softmax(x, out=out),
             "log_softmax": lambda x, out=None: fd.log_softmax(x, out=out),
             "process_logits": lambda x, out=None: fd.process_logits(x, top_k=20, out=out),
             "apply_repetition_penalty": lambda x, out=None: fd.apply_repetition_penalty(x, prev, 1.2, out=out),
             "layer_norm": lambda x, out=None: fd.layer_norm(x, out=out),
             "rms_norm": lambda x, out=None: fd.rms_norm(x, out=out)}
    want = calls[name](x.copy())
    assert calls[name](x, out=x) is x
    np.testing.assert_array_equal(x, want)


def test_every_public_out_function_is_covered():
    """A new public function with out= must get an overlap test here."""
    import inspect

    with_out = {n for n in fd.__all__ if callable(getattr(fd, n, None)) and not isinstance(getattr(fd, n), type)
                and "out" in inspect.signature(getattr(fd, n)).parameters}
    covered = {"softmax", "log_softmax", "linear", "attention", "layer_norm", "rms_norm", "process_logits",
               "apply_repetition_penalty"}
    assert with_out <= covered, f"no overlap test for {sorted(with_out - covered)}"
