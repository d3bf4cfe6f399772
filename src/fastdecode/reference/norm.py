"""LayerNorm and RMSNorm over the last axis, as picoGPT writes them.

Sums run in the input's dtype (NumPy's pairwise summation); constants are
Python floats, so float32 stays float32.
"""
import numpy as np


def layer_norm(x, w, b, eps):  # x: [N, d], w: [d], b: [d] | None -> [N, d]
    d = x.shape[-1]
    x = x - np.add.reduce(x, axis=-1, keepdims=True) / d
    y = x * (1 / np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True) / d + eps)) * w
    return y if b is None else y + b


def rms_norm(x, w, eps):  # x: [N, d], w: [d] -> [N, d]
    return x * (1 / np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True) / x.shape[-1] + eps)) * w
