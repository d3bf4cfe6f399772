"""A Linear layer as torch defines it: x W^T + b, with W stored [out, in]."""
import numpy as np


def linear(x, w, b=None, out=None):  # x: [N, in], w: [out, in], b: [out] | None -> [N, out]
    y = np.matmul(x, w.T, out=out)  # out: the backend's preallocated [N, out], or None
    if b is not None:
        y += b
    return y
