"""attention: both backends and every SIMD level against a float64 oracle
and PyTorch's scaled_dot_product_attention; grouped-query heads, causal and
not, KV-cache lengths, layouts, out=, decode through a cache, masked rows,
large and overflowing scores, thread counts, bad input.

Tolerance (float32 against the float64 oracle): an output row is a weighted
mean of value rows, so errors are measured against the values' magnitude:
rtol 1e-5 plus max|v| * (2e-6 + 2 eps * scale * max sum_d |q_d k_d|). The
last term is float32's own rounding of the scores, which the weights
inherit: it matters only for large, peaked scores.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdecode as fd
from conftest import RUN_SIMD, HAVE_C, SIMD_LEVELS, requires_c, requires_two_simd_levels

RTOL, ATOL = 1e-5, 2e-6


# ---------------------------------------------------------------------------
# Oracle: float64, one query at a time, written apart from the reference
# ---------------------------------------------------------------------------

def oracle(q, k, v, causal=True, scale=None, lengths=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    lengths = [tk] * b if lengths is None else list(lengths)
    out = np.zeros(q.shape)
    for bi in range(b):
        for h in range(hq):
            kh, vh = k[bi, h // (hq // hkv)], v[bi, h // (hq // hkv)]
            for i in range(tq):
                n = lengths[bi]
                if causal:
                    n = min(n, max(0, lengths[bi] - tq + i + 1))
                if n == 0:
                    continue
                s = kh[:n] @ q[bi, h, i] * scale
                w = np.exp(s - s.max())
                out[bi, h, i] = w @ vh[:n] / w.sum()
    return out


def tolerance(q, k, v, scale=None):
    """atol for float32 results (see the module docstring)."""
    if not np.size(v):
        return ATOL
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    aq, ak = np.abs(np.asarray(q, np.float64)), np.abs(np.asarray(k, np.float64))
    ak = np.repeat(ak, aq.shape[1] // ak.shape[1], axis=1)
    score_sums = (aq @ ak.swapaxes(-1, -2)).max(initial=0.0)  # max over query-key pairs of sum_d |q_d k_d|
    vmax = max(1.0, float(np.abs(v).max()))
    return vmax * (ATOL + 2 * np.finfo(np.float32).eps * abs(scale) * score_sums)


def check(y, q, k, v, causal=True, scale=None, lengths=None):
    ref = oracle(q, k, v, causal, scale, lengths)
    assert y.shape == np.shape(q) and y.dtype == np.asarray(q).dtype
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=tolerance(q, k, v, scale))


def qkv(rng, b, hq, hkv, tq, tk, d, dtype=np.float32, spread=1.0):
    q = (rng.standard_normal((b, hq, tq, d)) * spread).astype(dtype)
    k = (rng.standard_normal((b, hkv, tk, d)) * spread).astype(dtype)
    v = rng.standard_normal((b, hkv, tk, d)).astype(dtype)
    return q, k, v


# (B, Hq, Hkv, Tq, Tk, D): decode, GQA decode, MQA, chunked prefill, prefill,
# head sizes that are and are not multiples of the vector width
SHAPES = [
    (1, 1, 1, 1, 1, 1),
    (1, 4, 1, 1, 37, 64),
    (2, 32, 8, 1, 300, 128),
    (1, 12, 12, 1, 130, 64),
    (1, 64, 1, 1, 200, 80),
    (2, 8, 2, 5, 70, 96),
    (1, 6, 3, 33, 33, 67),
    (1, 4, 2, 70, 150, 256),
    (3, 2, 1, 17, 17, 5),
    (1, 16, 16, 65, 65, 33),
    (1, 8, 2, 1, 1100, 64),  # decode across several key blocks of the C kernel
    (2, 4, 4, 2, 600, 33),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [True, False])
def test_shapes(backend, rng, shape, causal):
    q, k, v = qkv(rng, *shape)
    check(fd.attention(q, k, v, causal=causal), q, k, v, causal)


# rows of a KV group (G * Tq) below and above the switch between the two C
# engines (keys on lanes, rows on lanes), head sizes around the vector width
LEVEL_SHAPES = [(1, 4, 1, 1, 100, 64), (2, 8, 2, 3, 90, 67), (1, 32, 8, 1, 257, 128), (1, 12, 12, 40, 40, 80),
                (2, 6, 3, 20, 75, 17), (1, 2, 2, 9, 9, 1), (1, 16, 1, 2, 70, 96)]


@pytest.mark.parametrize("shape", LEVEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_simd_level(simd, rng, shape):
    q, k, v = qkv(rng, *shape)
    lengths = rng.integers(0, shape[4] + 1, shape[0])
    check(fd.attention(q, k, v), q, k, v)
    check(fd.attention(q, k, v, causal=False, lengths=lengths), q, k, v, False, None, lengths)
    check(fd.attention(q, k, v, lengths=lengths, scale=0.3), q, k, v, True, 0.3, lengths)


@requires_two_simd_levels
def test_simd_levels_agree(rng):
    q, k, v = qkv(rng, 2, 8, 2, 7, 300, 72)
    results = {}
    with fd.use_backend("c"):
        for level in SIMD_LEVELS:  # the levels this CPU runs: set_simd never goes above them
            assert fd.set_simd(level) == level
            results[level] = fd.attention(q, k, v)
    fd.set_simd(RUN_SIMD)
    for y in results.values():
        np.testing.assert_allclose(y, results[SIMD_LEVELS[0]], rtol=1e-5, atol=1e-6)


@st.composite
def problems(draw):
    b, hkv, g = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 4, 8]))
    tk, d = draw(st.integers(1, 80)), draw(st.sampled_from([1, 3, 8, 16, 24, 31, 64, 65, 80, 128]))
    tq = draw(st.integers(1, tk))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, tk), min_size=b, max_size=b)))
    if lengths is not None and draw(st.booleans()):
        tq = draw(st.integers(1, tk + 3))  # with lengths, more queries than keys is allowed
    return b, hkv * g, hkv, tq, tk, d, lengths


def layout(a, kind):
    """The same values as a, in another memory layout."""
    if kind == "strided":  # every other element of a larger array
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "transposed":  # heads and positions swapped in memory
        return np.ascontiguousarray(a.swapaxes(1, 2)).swapaxes(1, 2)
    return a


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prob=problems(), causal=st.booleans(), scale=st.sampled_from([None, 0.05, 1.0]),
       kind=st.sampled_from(["contiguous", "strided", "transposed"]), out_kind=st.sampled_from([None, "c", "strided"]),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis(prob, causal, scale, kind, out_kind, seed):
    b, hq, hkv, tq, tk, d, lengths = prob
    q, k, v = qkv(np.random.default_rng(seed), b, hq, hkv, tq, tk, d)
    qs, ks, vs = (layout(a, kind) for a in (q, k, v))
    results = {}
    for name in ["numpy", "c"] if HAVE_C else ["numpy"]:
        out = None
        if out_kind == "c":
            out = np.full(q.shape, np.nan, np.float32)
        elif out_kind == "strided":
            out = np.full(q.shape[:-1] + (2 * d,), np.nan, np.float32)[..., ::2]
        with fd.use_backend(name):
            y = fd.attention(qs, ks, vs, causal=causal, scale=scale, lengths=lengths, out=out)
        if out is not None:
            assert y is out
        check(y, q, k, v, causal, scale, lengths)
        results[name] = y
    if len(results) == 2:  # each within the oracle's tolerance, so within twice of each other
        np.testing.assert_allclose(results["c"], results["numpy"], rtol=2 * RTOL, atol=2 * tolerance(q, k, v, scale))


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

def torch_attention(q, k, v, causal, lengths):
    """torch SDPA with the mask built explicitly: its is_causal aligns the
    queries top-left, ours are the last positions of each row."""
    torch = pytest.importorskip("torch")
    b, hq, tq, d = q.shape
    tk = k.shape[2]
    lengths = np.full(b, tk) if lengths is None else np.asarray(lengths)
    key = np.arange(tk)[None, None, None, :]
    n = lengths[:, None, None, None]
    mask = key < n
    if causal:
        mask = mask & (key <= n - tq + np.arange(tq)[None, None, :, None])
    y = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
        attn_mask=torch.from_numpy(mask), enable_gqa=True).numpy()
    return y, mask.any(axis=-1)  # [B, Hq, Tq, D], rows that see a key [B, 1, Tq]


@pytest.mark.parametrize("shape,causal,with_lengths", [
    ((1, 32, 8, 1, 500, 128), True, False),
    ((2, 12, 12, 1, 130, 64), True, True),
    ((1, 8, 2, 24, 24, 64), True, False),
    ((2, 8, 4, 6, 40, 80), True, True),
    ((1, 6, 2, 10, 50, 96), False, True),
])
def test_matches_torch(backend, rng, shape, causal, with_lengths):
    q, k, v = qkv(rng, *shape)
    lengths = rng.integers(1, shape[4] + 1, shape[0]) if with_lengths else None
    ref, seen = torch_attention(q, k, v, causal, lengths)
    y = fd.attention(q, k, v, causal=causal, lengths=lengths)
    rows = np.broadcast_to(seen, y.shape[:3])  # torch's fully masked rows are its own convention
    np.testing.assert_allclose(y[rows], ref[rows], rtol=1e-5, atol=3e-6)


# ---------------------------------------------------------------------------
# Semantics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 64), (4, 4, 80), (16, 1, 128)])
def test_decode_through_cache_equals_prefill(backend, rng, hq, hkv, d):
    """Token by token into a preallocated cache, with lengths, gives the rows of one prefill."""
    b, t, max_len = 2, 40, 64
    q, k, v = qkv(rng, b, hq, hkv, t, t, d)
    prefill = fd.attention(q, k, v)
    k_cache = np.zeros((b, hkv, max_len, d), np.float32)
    v_cache = np.zeros((b, hkv, max_len, d), np.float32)
    for pos in range(t):
        k_cache[:, :, pos], v_cache[:, :, pos] = k[:, :, pos], v[:, :, pos]
        step = fd.attention(q[:, :, pos:pos + 1], k_cache, v_cache, lengths=np.full(b, pos + 1))
        np.testing.assert_allclose(step[:, :, 0], prefill[:, :, pos], rtol=1e-5, atol=1e-6)
    # chunked prefill: two chunks of queries over the filled cache
    first = fd.attention(q[:, :, :25], k_cache, v_cache, lengths=[25, 25])
    second = fd.attention(q[:, :, 25:], k_cache, v_cache, lengths=[t, t])
    np.testing.assert_allclose(np.concatenate([first, second], axis=2), prefill, rtol=1e-5, atol=1e-6)


def test_rows_without_keys_are_zero(backend, rng):
    q, k, v = qkv(rng, 3, 4, 2, 5, 20, 16)
    y = fd.attention(q, k, v, lengths=[0, 3, 20])
    assert np.all(y[0] == 0)  # empty cache
    assert np.all(y[1, :, :2] == 0)  # positions -2, -1: before the first key
    assert np.all(np.isfinite(y)) and np.all(y[1, :, 2:] != 0)
    check(y, q, k, v, True, None, [0, 3, 20])
    assert np.all(fd.attention(q, k[:, :, :0], v[:, :, :0], lengths=[0, 0, 0]) == 0)  # no keys at all


def test_large_logits_do_not_overflow(backend, rng):
    """Scores around 1e4: the max is subtracted, so the answer is the value
    of the best key (or a mix of near ties), never inf or NaN."""
    q, k, v = qkv(rng, 2, 8, 2, 3, 50, 32)
    q *= 20
    k *= 20
    y = fd.attention(q, k, v, scale=1.0)
    assert np.all(np.isfinite(y))
    check(y, q, k, v, True, 1.0)
    assert np.abs(np.einsum("bhqd,bhkd->bhqk", q[:, :4], k[:, :1])).max() > 1e3


@pytest.mark.filterwarnings("ignore:overflow encountered in matmul:RuntimeWarning")  # the reference, as NumPy warns
def test_overflowing_scores_give_nan_like_the_reference(backend, rng):
    """Scores that overflow float32 (inf, or inf - inf = NaN) make the textbook
    softmax NaN; both backends give NaN on exactly those rows."""
    q, k, v = qkv(rng, 1, 2, 1, 3, 8, 16)
    q[0, 0, 1] = 1e30  # row (head 0, query 1) overflows against every key
    k[0, 0, 2] = 1e30  # key 2 overflows against every query that sees it
    y = fd.attention(q, k, v, causal=False)
    with fd.use_backend("numpy"):
        ref = fd.attention(q, k, v, causal=False)
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y).any() and not np.isnan(y).all()
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=1e-5, atol=1e-6)


def test_scale_zero_is_uniform(backend, rng):
    q, k, v = qkv(rng, 1, 2, 2, 1, 10, 8)
    y = fd.attention(q, k, v, scale=0.0, lengths=[6])
    np.testing.assert_allclose(y[:, :, 0], v[:, :, :6].mean(axis=2), rtol=1e-5, atol=1e-6)


def test_float64_is_kept(backend, rng):
    q, k, v = qkv(rng, 1, 4, 2, 3, 9, 16, dtype=np.float64)
    y = fd.attention(q, k, v)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, oracle(q, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_out_may_overlap_an_input(backend, rng, which):
    q, k, v = qkv(rng, 1, 2, 2, 6, 6, 8)
    want = oracle(q, k, v)
    args = {"q": q, "k": k, "v": v}
    y = fd.attention(q, k, v, out=args[which])
    assert y is args[which]
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL * 4)


def test_inputs_unchanged(backend, rng):
    q, k, v = qkv(rng, 2, 4, 2, 3, 30, 24)
    copies = [a.copy() for a in (q, k, v)]
    fd.attention(q, k, v, lengths=[10, 30])
    assert all(np.array_equal(a, c) for a, c in zip((q, k, v), copies))


@pytest.mark.parametrize("shape", [(1, 8, 1, 1, 3000, 64), (1, 4, 4, 1, 1000, 128), (2, 4, 1, 2, 900, 32),
                                   (1, 32, 1, 1, 1500, 72), (1, 2, 1, 64, 64, 16)])
def test_thread_counts_agree(simd, rng, shape):
    """1 to 5 threads, which split single sequences' keys into chunks, merged after."""
    q, k, v = qkv(rng, *shape)
    lengths = [shape[4] - 7 * b for b in range(shape[0])]
    before = fd.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 5):
            fd.set_num_threads(n)
            results.append(fd.attention(q, k, v, lengths=lengths))
    finally:
        fd.set_num_threads(before)
    check(results[0], q, k, v, True, None, lengths)
    for y in results[1:]:
        np.testing.assert_allclose(y, results[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def _bad_cases():
    q = np.zeros((1, 4, 2, 8), np.float32)
    k = np.zeros((1, 2, 5, 8), np.float32)
    return [
        (TypeError, "q", dict(q=q.astype(np.int32))),
        (TypeError, "dtype", dict(k=k.astype(np.float64))),
        (TypeError, "k", dict(k=k.astype(np.float16), v=k.astype(np.float16))),
        (ValueError, "q", dict(q=q[0])),
        (ValueError, "same shape", dict(v=k[:, :, :4])),
        (ValueError, "batch", dict(k=np.zeros((2, 2, 5, 8), np.float32), v=np.zeros((2, 2, 5, 8), np.float32))),
        (ValueError, "head size", dict(k=k[..., :4], v=k[..., :4])),
        (ValueError, "multiple", dict(k=np.zeros((1, 3, 5, 8), np.float32), v=np.zeros((1, 3, 5, 8), np.float32))),
        (ValueError, "multiple", dict(k=np.zeros((1, 0, 5, 8), np.float32), v=np.zeros((1, 0, 5, 8), np.float32))),
        (ValueError, "positions", dict(q=np.zeros((1, 4, 6, 8), np.float32))),
        (ValueError, "lengths", dict(lengths=[6])),
        (ValueError, "lengths", dict(lengths=[-1])),
        (ValueError, "lengths", dict(lengths=[1, 2])),
        (ValueError, "lengths", dict(lengths=3)),
        (TypeError, "lengths", dict(lengths=[1.5])),
        (TypeError, "lengths", dict(lengths=[True])),
        (TypeError, "lengths", dict(lengths=["x"])),
        (ValueError, "scale", dict(scale=np.nan)),
        (ValueError, "scale", dict(scale=np.inf)),
        (ValueError, "scale", dict(scale=1e300)),
        (TypeError, "scale", dict(scale="0.5")),
        (TypeError, "causal", dict(causal="yes")),
        (TypeError, "causal", dict(causal=None)),
        (ValueError, "out", dict(out=np.zeros((1, 4, 2, 7), np.float32))),
        (TypeError, "out", dict(out=np.zeros((1, 4, 2, 8), np.float64))),
        (TypeError, "out", dict(out=[0.0])),
    ]


@pytest.mark.parametrize("error,words,kwargs", _bad_cases(), ids=lambda x: str(x)[:30] if isinstance(x, str) else None)
def test_bad_input(backend, error, words, kwargs):
    args = dict(q=np.zeros((1, 4, 2, 8), np.float32), k=np.zeros((1, 2, 5, 8), np.float32),
                v=np.zeros((1, 2, 5, 8), np.float32))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fd.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@requires_c
def test_native_wrapper_refuses_inconsistent_shapes():
    """The Cython layer keeps C inside its buffers even when called directly."""
    from fastdecode import _native

    q = np.zeros((1, 4, 2, 8), np.float32)
    k = np.zeros((1, 2, 5, 8), np.float32)
    with pytest.raises(ValueError):
        _native.attention_f32(np.zeros((1, 4, 2, 8), np.float32), q, k, k[:, :, :3].copy(), True, 1.0,
                              np.array([5], np.int64))
    with pytest.raises(ValueError):
        _native.attention_f32(np.zeros((1, 4, 2, 8), np.float32), q, k, k, True, 1.0, np.array([5, 5], np.int64))


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------

def _at_offset(a, floats):
    """a's values in a C-contiguous array that starts `floats` floats past a 64-byte boundary."""
    buf = fd.empty_aligned(a.size + floats, a.dtype)
    out = buf[floats:].reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("shape", [(1, 8, 2, 1, 300, 128), (1, 4, 4, 1, 100, 64), (1, 8, 2, 40, 40, 80)])
def test_alignment_does_not_change_results(simd, rng, shape):
    q, k, v = qkv(rng, *shape)
    results = [fd.attention(_at_offset(q, off), _at_offset(k, off), _at_offset(v, off)) for off in (0, 1, 4, 15)]
    for y in results[1:]:
        assert np.array_equal(y, results[0])
    check(results[0], q, k, v)


def test_empty_aligned():
    for shape, dtype, alignment in [((2, 3, 5, 7), np.float32, 64), (10, np.float64, 128), ((0, 4), np.float32, 64)]:
        a = fd.empty_aligned(shape, dtype, alignment)
        assert a.shape == (shape if isinstance(shape, tuple) else (shape,)) and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % alignment == 0
    with pytest.raises(ValueError, match="alignment"):
        fd.empty_aligned(4, np.float32, 48)
    with pytest.raises(ValueError, match="shape"):
        fd.empty_aligned((2, -1))
