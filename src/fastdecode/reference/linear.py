"""A Linear layer as torch defines it: x W^T + b, with W stored [out, in]."""


def linear(x, w, b=None):  # x: [N, in], w: [out, in], b: [out] | None -> [N, out]
    y = x @ w.T
    return y if b is None else y + b
