"""The trust rule between Python and C (csrc/fastdecode.h): C trusts exactly
that each buffer it gets has the shape its size arguments name, and the
Cython wrappers guarantee it. Each wrapper is called here directly, past
fastdecode.ops' validation, with buffers that disagree (or None where a
buffer is required): a ValueError or TypeError, never a crash or a write
outside a buffer (tools/sanitize.sh runs this file under ASan)."""
import inspect
import re

import numpy as np
import pytest

from conftest import HAVE_C, requires_c

pytestmark = requires_c

f32, f64, i64 = np.float32, np.float64, np.int64


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


def params(rows, cols=6):
    p = np.zeros((rows, cols), f64)
    p[:, 0] = 1.0  # temperature
    p[:, 2] = 1.0  # top_p off
    if cols > 4:
        p[:, 4] = 1.0  # penalty off
    return p


def offsets(rows):
    return np.zeros(rows + 1, i64)


def cases():
    from fastdecode import _native as n

    x = np.ones((2, 5), f32)
    q, k = z(1, 4, 2, 8), z(1, 2, 5, 8)
    yield "softmax out rows", lambda: n.softmax_rows(z(0, 5), x, False)
    yield "softmax out cols", lambda: n.softmax_rows(z(2, 4), x, False)
    yield "softmax x short", lambda: n.softmax_rows(z(2, 5), z(1, 5), True)
    yield "softmax None", lambda: n.softmax_rows(None, x, False)
    yield "exp out short", lambda: n.exp_f32(z(3), np.ones(40, f32))
    yield "exp None", lambda: n.exp_f32(z(3), None)
    yield "sample ids short", lambda: n.sample_rows(z(1, dtype=i64), x, params(2), None, None)
    yield "sample params rows", lambda: n.sample_rows(z(2, dtype=i64), x, params(1), None, None)
    yield "sample params cols", lambda: n.sample_rows(z(2, dtype=i64), x, params(2, 4), None, None)
    yield "sample offsets short", lambda: n.sample_rows(z(2, dtype=i64), x, params(2), z(3, dtype=i64), offsets(1))
    yield "sample no columns", lambda: n.sample_rows(z(2, dtype=i64), z(2, 0), params(2), None, None)
    yield "sample None", lambda: n.sample_rows(None, x, params(2), None, None)
    yield "process out short", lambda: n.process_rows(z(1, 5), z(2, dtype=i64), x, params(2), None, None, False)
    yield "process status short", lambda: n.process_rows(z(2, 5), z(0, dtype=i64), x, params(2), None, None, True)
    yield "process params rows", lambda: n.process_rows(z(2, 5), z(2, dtype=i64), x, params(0), None, None, False)
    yield "process offsets long", lambda: n.process_rows(z(2, 5), z(2, dtype=i64), x, params(2), z(1, dtype=i64),
                                                         offsets(5), False)
    yield "argmax ids short", lambda: n.argmax_rows(z(1, dtype=i64), x)
    yield "argmax no columns", lambda: n.argmax_rows(z(2, dtype=i64), z(2, 0))
    yield "penalty out short", lambda: n.repetition_penalty_rows(z(1, 5), x, np.ones(2), None, offsets(2))
    yield "penalty rows short", lambda: n.repetition_penalty_rows(z(2, 5), x, np.ones(1), None, offsets(2))
    yield "penalty offsets short", lambda: n.repetition_penalty_rows(z(2, 5), x, np.ones(2), z(4, dtype=i64),
                                                                     offsets(0))
    yield "penalty offsets None", lambda: n.repetition_penalty_rows(z(2, 5), x, np.ones(2), None, None)
    yield "attention out", lambda: n.attention_f32(z(1, 4, 1, 8), q, k, k, True, 1.0, np.array([5], i64))
    yield "attention v", lambda: n.attention_f32(z(1, 4, 2, 8), q, k, z(1, 2, 3, 8), True, 1.0, np.array([5], i64))
    yield "attention D", lambda: n.attention_f32(z(1, 4, 2, 8), q, z(1, 2, 5, 4), z(1, 2, 5, 4), True, 1.0,
                                                 np.array([5], i64))
    yield "attention lengths", lambda: n.attention_f32(z(1, 4, 2, 8), q, k, k, True, 1.0, np.array([5, 5], i64))
    yield "attention heads", lambda: n.attention_f32(z(1, 4, 2, 8), q, z(1, 3, 5, 8), z(1, 3, 5, 8), True, 1.0,
                                                     np.array([5], i64))
    yield "attention None", lambda: n.attention_f32(z(1, 4, 2, 8), q, k, None, True, 1.0, np.array([5], i64))
    yield "linear out", lambda: n.linear_f32(z(2, 3), x, z(4, 5), None)
    yield "linear w", lambda: n.linear_f32(z(2, 4), x, z(4, 6), None)
    yield "linear bias", lambda: n.linear_f32(z(2, 4), x, z(4, 5), z(3))
    yield "linear None", lambda: n.linear_f32(z(2, 4), x, None, None)
    yield "norm out", lambda: n.norm_rows(z(3, 5), x, z(5), None, 1e-5, False)
    yield "norm w", lambda: n.norm_rows(z(2, 5), x, z(4), None, 1e-5, True)
    yield "norm b", lambda: n.norm_rows(z(2, 5), x, z(5), z(6), 1e-5, False)
    yield "read None", lambda: n.read_sum_f32(None)
    u8 = lambda *shape: np.zeros(shape, np.uint8)  # noqa: E731  (q8_0: 34 bytes per 32 weights)
    yield "dequantize rows", lambda: n.dequantize_rows(z(2, 32), u8(3, 34), 0)
    yield "dequantize row bytes", lambda: n.dequantize_rows(z(2, 32), u8(2, 33), 0)
    yield "dequantize partial block", lambda: n.dequantize_rows(z(2, 31), u8(2, 34), 0)
    yield "dequantize format", lambda: n.dequantize_rows(z(2, 32), u8(2, 34), 99)
    yield "linear_quant out", lambda: n.linear_quant(z(2, 3), z(2, 32), u8(4, 34), None, 0)
    yield "linear_quant x", lambda: n.linear_quant(z(2, 4), z(2, 64), u8(4, 34), None, 0)
    yield "linear_quant bias", lambda: n.linear_quant(z(2, 4), z(2, 32), u8(4, 34), z(3), 0)
    yield "linear_quant format", lambda: n.linear_quant(z(2, 4), z(2, 32), u8(4, 34), None, -1)
    ids = np.array([0, 17], np.int64)
    yield "x16_rows count", lambda: n.x16_rows(u8(3, 34), u8(32, 34), 0, ids)
    yield "x16_rows row bytes", lambda: n.x16_rows(u8(2, 33), u8(32, 34), 0, ids)
    yield "x16_rows partial block", lambda: n.x16_rows(u8(2, 35), u8(32, 35), 0, ids)
    yield "x16_rows format", lambda: n.x16_rows(u8(2, 34), u8(32, 34), 4, ids)
    yield "x16_rows id", lambda: n.x16_rows(u8(2, 34), u8(32, 34), 0, np.array([0, 32], np.int64))
    yield "x16_rows negative id", lambda: n.x16_rows(u8(2, 34), u8(32, 34), 0, np.array([-1, 0], np.int64))
    yield "weight order not contiguous", lambda: n.set_weight_order([z(4, 6)[:, ::2]])
    # an output that overlaps an input without being it (NumPy's b[:-1] / b[1:])
    b = np.ones(11, f32)
    yield "softmax overlap", lambda: n.softmax_rows(b[1:].reshape(2, 5), b[:-1].reshape(2, 5), False)
    yield "exp overlap", lambda: n.exp_f32(b[1:], b[:-1])
    yield "penalty overlap", lambda: n.repetition_penalty_rows(b[1:].reshape(2, 5), b[:-1].reshape(2, 5),
                                                               np.ones(2), np.array([1], i64), offsets(2))
    yield "process overlap", lambda: n.process_rows(b[1:].reshape(2, 5), z(2, dtype=i64), b[:-1].reshape(2, 5),
                                                    params(2), None, None, False)
    yield "norm overlap", lambda: n.norm_rows(b[1:].reshape(2, 5), b[:-1].reshape(2, 5), z(5), None, 1e-5, False)
    w = np.ones((4, 5), f32)
    yield "linear out in w", lambda: n.linear_f32(w.reshape(-1)[:8].reshape(2, 4), x, w, None)
    yield "argmax ids in x", lambda: n.argmax_rows(x.reshape(-1)[:4].view(i64), x)
    yield "attention out in k", lambda: n.attention_f32(k.reshape(-1)[:64].reshape(1, 4, 2, 8), q, k, k.copy(),
                                                        True, 1.0, np.array([5], i64))


CASES = list(cases()) if HAVE_C else []


@pytest.mark.parametrize("call", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_native_wrapper_refuses_mismatched_buffers(call):
    with pytest.raises((ValueError, TypeError)):
        call()


def test_every_native_kernel_wrapper_is_covered():
    """A new wrapper that takes buffers gets a case above."""
    from fastdecode import _native

    kernels = {"softmax_rows", "exp_f32", "sample_rows", "process_rows", "argmax_rows", "repetition_penalty_rows",
               "attention_f32", "read_sum_f32", "linear_f32", "norm_rows", "set_weight_order", "dequantize_rows",
               "linear_quant", "x16_rows"}
    called = set(re.findall(r"n\.(\w+)\(", inspect.getsource(cases)))
    assert kernels <= called
    public = {name for name in dir(_native) if not name.startswith("_") and callable(getattr(_native, name))}
    buffer_takers = {name for name in public if name.endswith(("_rows", "_f32")) or name == "set_weight_order"}
    assert buffer_takers <= kernels, f"wrappers without a mismatch case: {sorted(buffer_takers - kernels)}"


def test_in_place_calls_stay_allowed():
    """Where fastdecode.h says a kernel may work in place, out is x itself."""
    from fastdecode import _native as n

    x = np.array([[1.0, 2.0, 3.0]], f32)
    n.softmax_rows(x, x, False)
    np.testing.assert_allclose(x.sum(), 1.0, rtol=1e-6)
    y = np.array([[1.0, -2.0, 3.0]], f32)
    n.repetition_penalty_rows(y, y, np.array([2.0]), np.array([1, 2], i64), np.array([0, 2], i64))
    np.testing.assert_array_equal(y, [[1.0, -4.0, 1.5]])
    q = np.ones((1, 2, 1, 4), f32)
    n.attention_f32(q, q, np.ones((1, 1, 3, 4), f32), np.full((1, 1, 3, 4), 2.0, f32), True, 1.0,
                    np.array([3], i64))
    np.testing.assert_allclose(q, 2.0)
