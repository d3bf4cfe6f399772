"""Softmax contenders: fastdecode (C, NumPy reference), NumPy written out,
scipy.special.softmax, torch.softmax."""
import numpy as np

from .harness import Case, optional_import


def cases(quick: bool) -> list:
    import fastdecode
    from fastdecode import reference

    shapes = [(1, 50257), (1, 128256), (64, 50257)] if quick else \
        [(1, 32000), (1, 50257), (1, 128256), (1, 151936), (16, 50257), (64, 50257), (64, 128256)]
    scipy_special = optional_import("scipy.special")
    torch = optional_import("torch")
    out = []
    for shape in shapes:
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 4
        buf = np.empty_like(x)
        c = {
            "fastdecode-c": lambda x=x, buf=buf: _with("c", fastdecode.softmax, x, buf),
            "fastdecode-numpy": lambda x=x: reference.softmax.softmax(x),
            "numpy": lambda x=x: _numpy_softmax(x),
        }
        if scipy_special is not None:
            import scipy.special

            c["scipy"] = lambda x=x: scipy.special.softmax(x, axis=-1)
        if torch is not None:
            xt = torch.from_numpy(x)
            c["torch"] = lambda xt=xt: torch.softmax(xt, dim=-1)
        out.append(Case("softmax", f"[{shape[0]}, {shape[1]}]", c, {"B": shape[0], "V": shape[1]}))
    return out


def _with(backend, fn, x, buf):
    import fastdecode

    with fastdecode.use_backend(backend):
        return fn(x, out=buf)


def _numpy_softmax(x):  # what a NumPy user writes, float32 throughout
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
