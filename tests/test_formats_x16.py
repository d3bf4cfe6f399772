"""Block-format weights (q8_0, q4_0, q4_K, q6_K) repacked 16 rows at a time (QuantizedTensor.repack,
csrc/quant_x16.c): the same bytes, GGUF's layout given back exactly, and
products equal to the GGUF layout's within float32 rounding at every SIMD
level, with and without AVX-512 VNNI."""
import numpy as np
import pytest

import fastdecode as fd
from fastdecode import formats
from fastdecode.reference import quant as ref_quant

from test_formats import assert_close_to_reference, weights

native = pytest.importorskip("fastdecode._native", reason="the x16 layout is the C backend's")

X16 = ["q8_0", "q4_0", "q4_K", "q6_K"]


def n_in_of(fmt, blocks=3):  # an odd number of blocks
    return blocks * formats.format_info(fmt).block


@pytest.fixture(params=["vnni", "no-vnni"])
def vnni(request, simd):
    """The avx512 level with and without vpdpbusd (where the CPU has it; the
    other levels ignore it)."""
    used = native.set_vnni(request.param == "vnni")
    if request.param == "vnni" and not used and simd == "avx512":
        pytest.skip("this CPU has no AVX-512 VNNI")
    yield request.param
    native.set_vnni(True)


@pytest.mark.parametrize("fmt", X16)
@pytest.mark.parametrize("shape", [(16, 1), (53, 3), (4096, 2), (32, 24), (19, 1)])  # 53, 19: tail rows
def test_repack_keeps_the_gguf_bytes(fmt, shape, rng):
    shape = (shape[0], n_in_of(fmt, shape[1]))
    qt = fd.quantize(weights(rng, shape), fmt)
    before, deq = qt.data.copy(), fd.dequantize(qt)
    assert qt.repack() is qt and qt.layout == "x16" and qt.nbytes == before.nbytes
    assert qt.repack() is qt and qt.layout == "x16"  # once is enough
    np.testing.assert_array_equal(qt.data, before)
    assert not qt.data.flags.writeable
    np.testing.assert_array_equal(fd.dequantize(qt).view(np.uint32), deq.view(np.uint32))
    with fd.use_backend("numpy"):
        np.testing.assert_array_equal(fd.dequantize(qt).view(np.uint32), deq.view(np.uint32))
    rows = np.array([0, shape[0] - 1, 3])
    np.testing.assert_array_equal(qt[rows], deq[rows])


@pytest.mark.parametrize("fmt", X16)
def test_x16_dequantize_is_gguf_bit_for_bit_every_level(simd, fmt, rng):
    """Rows decoded from the interleaved groups (and the 5 tail rows) at each
    SIMD level equal gguf.quants' dequantization of GGUF's bytes."""
    import gguf.quants as gq

    qt = fd.quantize(weights(rng, (53, n_in_of(fmt, 2))), fmt)
    want = np.asarray(gq.dequantize(qt.data, qt.info.gguf_type), np.float32)
    qt.repack()
    np.testing.assert_array_equal(fd.dequantize(qt).view(np.uint32), want.view(np.uint32))


def test_q6_K_group_reads_in_address_order(rng):
    """q6_K's 16-row super-block (quant_x16.c's drawing): d[16], then per half
    h the scales of sub-blocks 8 h .. 8 h + 7, then for k < 8 the chunks of ql
    bytes 64 h + 4 k.., 64 h + 32 + 4 k.. and qh bytes 32 h + 4 k.."""
    qt = fd.quantize(weights(rng, (16, 256)), "q6_K")
    g = qt.data.copy()  # [16, 210]: ql[128], qh[64], scales[16], d
    blk = qt.repack().kernel_view()[0].reshape(-1)
    lanes = lambda field: field.reshape(16, -1, 4).transpose(1, 0, 2).reshape(-1)  # 4-byte lanes, row l at 4 l
    want = [g[:, 208:].reshape(-1)]
    for h in range(2):
        want.append(lanes(g[:, 192 + 8 * h:200 + 8 * h]))
        for k in range(8):
            for field in (g[:, 64 * h + 4 * k:], g[:, 64 * h + 32 + 4 * k:], g[:, 128 + 32 * h + 4 * k:]):
                want.append(lanes(field[:, :4]))
    np.testing.assert_array_equal(blk, np.concatenate(want))


@pytest.mark.parametrize("fmt,shape", [("f16", (32, 256)), ("bf16", (32, 64)), ("q6_K", (12, 256)),
                                       ("q8_0", (15, 64)), ("q4_0", (8, 64))])
def test_repack_leaves_other_tensors_alone(fmt, shape, rng):
    qt = fd.quantize(weights(rng, shape), fmt)
    assert qt.repack() is qt and qt.layout == "gguf"
    empty = formats.QuantizedTensor("q8_0", (0, 64), np.zeros(0, np.uint8))
    assert empty.repack() is empty and empty.layout == "gguf"


@pytest.mark.parametrize("fmt", X16)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 17, 33, ref_quant.INT8_X_MAX_ROWS + 1])
def test_x16_linear_every_level(vnni, fmt, rows, rng):
    """The int8 path (up to INT8_X_MAX_ROWS rows) and the prefill path (tiles
    decoded from whole groups, then BLAS): against the NumPy reference, with
    assert_close_to_reference's bound (same integer sums, other float order)."""
    n_in = n_in_of(fmt)
    qt = fd.quantize(weights(rng, (53, n_in)), fmt).repack()  # 3 groups and 5 rows in GGUF's layout
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    b = rng.standard_normal(53).astype(np.float32)
    assert_close_to_reference(fd.linear(x, qt, b), x, qt, b)
    assert_close_to_reference(fd.linear(x, qt), x, qt, None)


@pytest.mark.parametrize("fmt", X16)
def test_x16_threads_split_on_groups(fmt, rng):
    n_in = n_in_of(fmt, 1)
    qt = fd.quantize(weights(rng, (4119, n_in)), fmt)  # 257 groups and 7 rows: shares of uneven size
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    want = fd.linear(x, qt)
    qt.repack()
    before = fd.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fd.set_num_threads(threads)
            got = fd.linear(x, qt)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    finally:
        fd.set_num_threads(before)


def test_x16_convert_refuses_what_it_cannot_hold(rng):
    blocks = fd.quantize(weights(rng, (16, 64)), "q8_0").data
    with pytest.raises(ValueError):
        native.x16_convert(np.empty((16, 10), np.uint8), blocks, 0, True)
    with pytest.raises(ValueError):
        native.x16_convert(np.empty_like(blocks), blocks, 4, True)  # bf16 has no x16 layout


@pytest.mark.parametrize("fmt", X16)
def test_keep_gguf_serves_lookups_and_products(fmt, rng):
    """A tied embedding/head: lookups read GGUF's rows, products the interleaved copy."""
    n_in = n_in_of(fmt, 1)
    qt = fd.quantize(weights(rng, (35, n_in)), fmt)
    before = qt.data
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    want = fd.linear(x, qt)
    assert qt.repack(keep_gguf=True).layout == "x16" and qt.has_gguf_blocks and qt.data is before
    np.testing.assert_allclose(fd.linear(x, qt), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(qt[np.array([0, 34])], fd.dequantize(qt)[[0, 34]])


@pytest.mark.parametrize("fmt", X16)
def test_lookups_gather_rows_from_the_groups(simd, fmt, rng):
    """qt[ids] of a repacked tensor without GGUF's copy: rows in groups and
    in the tail, negative ids, any shape of ids; bit for bit the rows of the
    dequantized tensor; ids out of range are an IndexError (the wrapper
    below it: ValueError)."""
    qt = fd.quantize(weights(rng, (37, n_in_of(fmt, 2))), fmt)  # 2 groups and 5 tail rows
    deq = fd.dequantize(qt)
    assert qt.repack().layout == "x16" and not qt.has_gguf_blocks
    ids = np.array([[0, 15, 16], [31, 32, 36], [-1, -37, 17]])
    np.testing.assert_array_equal(qt[ids].view(np.uint32), deq[ids].view(np.uint32))
    np.testing.assert_array_equal(qt[5], deq[5])
    with pytest.raises(IndexError):
        qt[np.array([37])]
    with pytest.raises(ValueError):
        native.x16_rows(np.empty((1, qt.kernel_view()[0].shape[1]), np.uint8), qt.kernel_view()[0],
                        qt.info.code, np.array([37], np.int64))


def test_loaded_models_are_repacked_where_the_cpu_has_avx512(monkeypatch):
    m = fd.load("default", weights="q8_0")
    mats = [layer.qkv for layer in m.weights.layers]
    want = "x16" if native.cpu_max_level() == "avx512" else "gguf"
    assert {w.layout for w in mats} == {want}
    if m.weights.head is m.weights.embed and isinstance(m.weights.head, formats.QuantizedTensor):
        assert m.weights.head.layout == want  # held once: lookups gather their rows from the groups
        assert m.weights.head.has_gguf_blocks == (want == "gguf")
    head = fd.load("default", weights="q4_k_m").weights.head
    assert (head.format, head.layout) == ("q6_K", want)  # q4_k_m's q6_K head too
    monkeypatch.setenv("FASTDECODE_REPACK", "0")
    assert {w.layout for w in (layer.qkv for layer in fd.load("default", weights="q8_0").weights.layers)} == {"gguf"}
    assert isinstance(mats[0], formats.QuantizedTensor)
