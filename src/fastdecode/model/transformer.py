"""The decoder's forward pass over a chunk of tokens, with a KV cache, in NumPy.

picoGPT's style: a handful of short functions with shape comments. The
residual stream is kept as ``[N, d]`` with N = B·T rows, so every
projection is one BLAS call that reads its weight once, whatever the batch.
Attention goes through :func:`fastdecode.ops.attention`, so the active
backend (NumPy reference or C) runs it. float32 end to end: constants are
Python floats or float32, never float64 scalars.

Padding: a batch chunk ``tokens [B, T]`` is *left*-padded: row b's real
tokens are its last ``counts[b]`` entries. In the cache every row starts at
position 0 (no holes), so row b's new tokens take positions
``lengths[b] .. lengths[b] + counts[b] - 1``, and ``ops.attention``'s
``lengths`` convention (the queries are the last Tq positions) lines the
chunk up with them. A padding entry is computed and ignored; it never
reaches the cache, so each row's results are those of the row alone.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..arrays import zeros_aligned
from .config import ModelConfig, rope_frequencies
from .weights import Layer, Weights

F32 = np.float32
_SQRT_2_OVER_PI = F32(np.sqrt(2.0 / np.pi))


class ContextOverflowError(ValueError):
    """The sequence would grow beyond the cache or the model's maximum length."""


# ---------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------

class KVCache:
    """Keys and values of every layer, preallocated: ``k, v [layers, B, Hkv, max_len, D]``.
    ``lengths[b]`` positions of row b are filled."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int):
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        # 64-byte aligned, so with D a multiple of 16 every cached row starts a cache line
        # (np.zeros puts it 16 bytes off: each vector load then spans two lines). Zeroed,
        # because the NumPy reference multiplies the unfilled positions by zero weights.
        self.k = zeros_aligned(shape, F32)
        self.v = zeros_aligned(shape, F32)
        self.lengths = np.zeros(batch, np.int64)
        self.max_len = max_len

    def write(self, layer: int, k, v, start, counts, uniform: bool):  # k, v: [B, Hkv, T, D]; start, counts: [B]
        """Store each row's last counts[b] new positions at start[b] onward
        (``uniform``: every row starts at start[0] and takes all T)."""
        b, _, t, _ = k.shape
        if uniform:
            s = start[0]
            self.k[layer, :, :, s:s + t] = k
            self.v[layer, :, :, s:s + t] = v
        elif t == 1 and counts.all():  # decode, rows at different positions
            rows = np.arange(b)
            self.k[layer, rows, :, start] = k[:, :, 0]
            self.v[layer, rows, :, start] = v[:, :, 0]
        else:
            for row in range(b):
                s, n = start[row], counts[row]
                self.k[layer, row, :, s:s + n] = k[row, :, t - n:]
                self.v[layer, row, :, s:s + n] = v[row, :, t - n:]


# ---------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------

def norm(x, w, b, config):  # x: [N, d] -> [N, d]: LayerNorm (GPT-2, with a bias) or RMSNorm (Llama)
    if b is not None:
        return ops.layer_norm(x, w, b, config.norm_eps)
    return ops.rms_norm(x, w, config.norm_eps)


def gelu_tanh(x):  # GPT-2's gelu_new
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def gelu_erf(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x * F32(1 / np.sqrt(2.0))))


def silu(x):  # x * sigmoid(x), written with tanh so large |x| cannot overflow exp
    return 0.5 * x * (1.0 + np.tanh(0.5 * x))


ACTIVATION = {"gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu": gelu_erf,
              "relu": lambda x: np.maximum(x, 0), "silu": silu}


def linear(x, w, b, out=None):  # x: [N, in], w: [out, in], b: [out] | None -> [N, out]
    return ops.linear(x, w, b, out=out)


def rope_angles(config, positions):  # positions: [B, T] -> cos, sin: [B, 1, T, D/2]
    angles = positions[:, None, :, None] * rope_frequencies(config)  # float64 for accuracy, then float32
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)


def rotate(x, cos, sin):  # x: [B, H, T, D] -> [B, H, T, D] (rotate-half pairs: i, i + D/2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def split_heads(qkv, config, b, t):  # qkv: [B·T, (Hq + 2 Hkv) D] -> [B, Hq + 2 Hkv, T, D]: q, k, v heads
    return qkv.reshape(b, t, -1, config.head_dim).transpose(0, 2, 1, 3)


def merge_heads(a):  # a: [B, H, T, D] -> [B·T, H·D]
    b, h, t, d = a.shape
    return a.transpose(0, 2, 1, 3).reshape(b * t, h * d)


# ---------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------

def attention(x, layer: Layer, config, i, cache, rope, chunk):  # x: [B·T, d] -> [B·T, d]
    start, counts, end, uniform = chunk
    b, hq = len(start), config.num_heads
    heads = split_heads(linear(x, layer.qkv, layer.qkv_bias), config, b, x.shape[0] // b)  # [B, Hq+2Hkv, T, D]
    qk = heads[:, :hq + config.num_kv_heads]
    if rope is not None:
        qk = rotate(qk, *rope)  # q and k heads in one go
    cache.write(i, qk[:, hq:], heads[:, hq + config.num_kv_heads:], start, counts, uniform)
    a = ops.attention(qk[:, :hq], cache.k[i], cache.v[i], causal=True, scale=config.layer_attn_scale(i),
                      lengths=end)  # [B, Hq, T, D]
    return linear(merge_heads(a), layer.out, layer.out_bias)


def mlp(x, layer: Layer, config):  # x: [B·T, d] -> [B·T, d]
    h = linear(x, layer.up, layer.up_bias)  # [B·T, F] or [B·T, 2F] (gate, up)
    if config.family == "llama":
        f = config.intermediate_size
        h = silu(h[:, :f]) * h[:, f:]
    else:
        h = ACTIVATION[config.activation](h)
    return linear(h, layer.down, layer.down_bias)


def block(x, layer: Layer, config, i, cache, rope, chunk):  # x: [B·T, d] -> [B·T, d]
    x = x + attention(norm(x, layer.attn_norm, layer.attn_norm_bias, config), layer, config, i, cache, rope, chunk)
    return x + mlp(norm(x, layer.mlp_norm, layer.mlp_norm_bias, config), layer, config)


def forward(weights: Weights, config: ModelConfig, tokens, cache: KVCache, counts=None, all_logits=False,
            out=None):
    """Run a chunk through the decoder, appending it to the cache.

    tokens: [B, T] int, left-padded: row b's real tokens are its last
    counts[b] entries (default: all T). Returns the logits of the last
    position of each row, [B, V] (written into ``out`` when given), or of
    every position, [B, T, V], with ``all_logits`` (padding entries' logits
    are meaningless).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    b, t = tokens.shape
    counts = np.full(b, t, np.int64) if counts is None else np.asarray(counts, np.int64)
    start = cache.lengths.copy()
    end = start + counts
    if end.max(initial=0) > min(cache.max_len, config.max_positions):
        raise ContextOverflowError(
            f"the sequence would reach {end.max()} positions; the cache holds {cache.max_len} and the model "
            f"{config.max_positions}")
    positions = np.maximum(start[:, None] + np.arange(t) - (t - counts)[:, None], 0)  # [B, T], padding -> 0
    x = weights.embed[tokens.reshape(-1)]  # [B·T, d]
    if weights.positions is not None:
        x += weights.positions[positions.reshape(-1)]
    rope = rope_angles(config, positions) if config.family == "llama" else None
    chunk = (start, counts, end, bool((counts == t).all() and (start == start[0]).all()))
    for i, layer in enumerate(weights.layers):
        x = block(x, layer, config, i, cache, rope, chunk)
    cache.lengths[:] = end
    if all_logits:
        return linear(norm(x, weights.final_norm, weights.final_norm_bias, config), weights.head, None).reshape(b, t, -1)
    x = x.reshape(b, t, -1)[:, -1]  # [B, d]
    return linear(norm(x, weights.final_norm, weights.final_norm_bias, config), weights.head, None, out)
