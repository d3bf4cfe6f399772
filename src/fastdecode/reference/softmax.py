"""Softmax, the textbook way: subtract the max, exponentiate, normalize."""
import numpy as np


def softmax(x):  # [..., n] -> [..., n]
    with np.errstate(invalid="ignore"):  # NaN / all -inf rows give NaN, like NumPy
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(x.dtype)


def log_softmax(x):  # [..., n] -> [..., n]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = x.max(axis=-1, keepdims=True)
        s = np.exp(x - m).sum(axis=-1, keepdims=True, dtype=np.float64)
        return ((x - m) - np.log(s)).astype(x.dtype)
