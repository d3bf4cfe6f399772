"""Scaled dot-product attention, the textbook way: scores, mask, softmax,
weighted sum. Grouped-query attention repeats each K/V head for its group."""
import numpy as np

from .softmax import softmax


def visible_keys(tq, tk, causal, lengths):  # -> [B, 1, Tq, Tk] bool
    """Key j is visible to query i of row b when j < lengths[b] and, if
    causal, j <= the query's position lengths[b] - Tq + i."""
    key = np.arange(tk)[None, None, None, :]
    n = np.asarray(lengths)[:, None, None, None]
    mask = key < n
    if causal:
        pos = n - tq + np.arange(tq)[None, None, :, None]
        mask = mask & (key <= pos)
    return mask


def attention(q, k, v, causal=True, scale=None, lengths=None):
    # q: [B, Hq, Tq, D]  k, v: [B, Hkv, Tk, D]  lengths: [B] or None -> [B, Hq, Tq, D]
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    lengths = np.full(b, tk) if lengths is None else lengths
    k = np.repeat(k, hq // hkv, axis=1)  # [B, Hq, Tk, D]
    v = np.repeat(v, hq // hkv, axis=1)  # [B, Hq, Tk, D]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    scores = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)  # [B, Hq, Tq, Tk]
    mask = visible_keys(tq, tk, causal, lengths)  # [B, 1, Tq, Tk]
    scores = np.where(mask, scores, -np.inf)
    weights = np.where(mask.any(axis=-1, keepdims=True), softmax(scores), 0)  # no visible key: zeros
    return (weights @ v).astype(q.dtype)
