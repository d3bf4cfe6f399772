"""Quantized weights in NumPy: the readable definition of a product with a
quantized weight, and the K-format quantizers.

The product (what both backends compute):

- q8_0, q4_0, q4_K, q6_K with at most INT8_X_MAX_ROWS rows of x (decode
  steps, short prompts): x is first quantized to int8 in blocks of 32 (llama.cpp's way,
  :func:`quantize_x`), then multiplied by the dequantized weights. The C
  kernels take the same int8 x and sum the integer products block by block
  exactly, so the two differ only by the rounding of float32 sums.
- bf16 and f16, or more rows (a long prefill): x stays float32 and
  multiplies the dequantized weights (the C backend decodes tiles and
  calls BLAS, compute-efficient where integer dots of 8 rows per pass
  over W are not).

Dequantization is the gguf package's (:func:`dequantize`).

q4_K and q6_K quantizers (gguf 0.19 implements only their dequantization).
Simpler than llama.cpp's make_qkx2_quants / make_qx_quants (no search for
the least-squares scale); instead every scale is rounded *up* so nothing is
clipped, which bounds each weight's error by half a step of its sub-block:

- q4_K: sub-block j of 32 weights gets min m_j = dmin * mq_j >= -min(w)
  and step s_j = d * sq_j >= (max(w) + m_j) / 15, so
  ``|w - dequantize(w)| <= s_j / 2`` (plus float32 rounding);
- q6_K: sub-block j of 16 weights gets step s_j = d * sq_j >= max|w| / 31, so
  ``|w - dequantize(w)| <= s_j / 2``.

tests/test_formats.py checks both bounds against gguf's dequantization.
"""
import numpy as np

INT8_X_MAX_ROWS = 64  # up to this many rows of x take int8 activations (C: 16 rows per pass over W)
INT8_X_FORMATS = ("q8_0", "q4_0", "q4_K", "q6_K")


def quantize_x(x):  # x: [N, in] float32, in % 32 == 0 -> q [N, in] int8, d [N, in / 32] float32
    """Each block of 32 values: d = amax / 127, q = rint(x * (127 / amax))
    (round half to even), all in float32: q8_0's scheme with a float32
    scale. A block with NaN or inf gets d = NaN and q = 0."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(axis=2)
    finite = np.isfinite(amax)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(finite & (amax > 0), np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(np.where(finite[..., None], b, 0) * inv[..., None]).astype(np.int8)
    d = np.where(finite, amax / np.float32(127), np.float32(np.nan)).astype(np.float32)
    return q.reshape(x.shape), d


def dequantize(w):  # w: QuantizedTensor [out, in] -> [out, in] float32, gguf.quants.dequantize's values
    import gguf.quants

    if w.data.size == 0:
        return np.zeros(w.shape, np.float32)
    return np.asarray(gguf.quants.dequantize(w.data, w.info.gguf_type), np.float32).reshape(w.shape)


def linear(x, w, b=None):  # x: [N, in] float32, w: QuantizedTensor [out, in], b: [out] | None -> [N, out] float32
    if w.format in INT8_X_FORMATS and x.shape[0] <= INT8_X_MAX_ROWS:
        q, d = quantize_x(x)
        xs = (q.reshape(d.shape + (32,)) * d[..., None].astype(np.float64)).reshape(x.shape)  # exact in float64
        y = (xs @ dequantize(w).T.astype(np.float64)).astype(np.float32)
    else:
        y = x @ dequantize(w).T
    return y if b is None else y + b


def _f16_up(v):  # v: float32 >= 0 -> float16 >= v (the nearest, else the next one up)
    h = v.astype(np.float16)
    low = h.astype(np.float32) < v
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h


def _steps(need, levels):  # need: [nb, n_sub] float >= 0 -> d [nb] float16, q [nb, n_sub] uint8: d*q >= need
    d = _f16_up((need.max(axis=1) / levels).astype(np.float32))
    df = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(df > 0, np.ceil(need.astype(np.float64) / df), 0)
    return d, np.clip(q, 0, levels).astype(np.uint8)


def quantize_q4_K(w):  # w: [out, in] float32, in % 256 == 0 -> [out, in / 256 * 144] uint8
    x = w.reshape(-1, 8, 32)  # [blocks, sub-block, weight]
    nb = x.shape[0]
    dmin, mq = _steps(np.maximum(0.0, -x.min(axis=2)), 63)
    m = dmin.astype(np.float32)[:, None] * mq.astype(np.float32)  # [nb, 8]: as gguf's dequantization computes it
    d, sq = _steps((x.max(axis=2) + m) / 15, 63)
    s = d.astype(np.float32)[:, None] * sq.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s[..., None] > 0, np.rint((x + m[..., None]) / s[..., None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)  # [nb, 8, 32]
    scales = np.empty((nb, 12), np.uint8)  # ggml's get_scale_min_k4 packing
    scales[:, 0:4] = sq[:, :4] | ((sq[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mq[:, :4] | ((mq[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sq[:, 4:] & 15) | ((mq[:, 4:] & 15) << 4)
    qs = q[:, 0::2] | (q[:, 1::2] << 4)  # [nb, 4, 32]: sub-blocks 2j, 2j+1 in low, high nibbles
    blocks = np.concatenate([d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), scales,
                             qs.reshape(nb, 128)], axis=1)
    return blocks.reshape(w.shape[0], -1)


def quantize_q6_K(w):  # w: [out, in] float32, in % 256 == 0 -> [out, in / 256 * 210] uint8
    x = w.reshape(-1, 16, 16)  # [blocks, sub-block, weight]
    nb = x.shape[0]
    d, sq = _steps(np.abs(x).max(axis=2) / 31, 127)
    s = d.astype(np.float32)[:, None] * sq.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s[..., None] > 0, np.rint(x / s[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(nb, 2, 128)  # [nb, half, weight]
    ql = (q[:, :, :64] & 15) | ((q[:, :, 64:] & 15) << 4)  # [nb, 2, 64]
    hi = (q >> 4).reshape(nb, 2, 4, 32)  # the four 32-weight quarters of each half
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)  # [nb, 2, 32]
    blocks = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sq.view(np.uint8),
                             d[:, None].view(np.uint8)], axis=1)
    return blocks.reshape(w.shape[0], -1)


QUANTIZERS = {"q4_K": quantize_q4_K, "q6_K": quantize_q6_K}
