"""LayerNorm and RMSNorm over the last axis at decode and prefill shapes:
fastdecode's C kernel against its NumPy reference and torch.nn.functional
(layer_norm, rms_norm), float32, same inputs."""
import numpy as np

from .harness import Case, optional_import

SHAPES = [(1, 768), (1, 4096), (32, 4096)]  # [rows, n]: GPT-2 and Llama-7B decode steps, a prefill chunk


def cases(quick: bool) -> list:
    import fastdecode
    from fastdecode.reference import norm as ref

    torch = optional_import("torch")
    out = []
    for rows, n in SHAPES[:2] if quick else SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((rows, n), dtype=np.float32)
        w = rng.standard_normal(n, dtype=np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        buf = np.empty_like(x)

        def c_layer(x=x, w=w, b=b, buf=buf):
            with fastdecode.use_backend("c"):
                return fastdecode.layer_norm(x, w, b, 1e-5, out=buf)

        def c_rms(x=x, w=w, buf=buf):
            with fastdecode.use_backend("c"):
                return fastdecode.rms_norm(x, w, 1e-6, out=buf)

        layer = {"fastdecode-c": c_layer, "fastdecode-numpy": lambda x=x, w=w, b=b: ref.layer_norm(x, w, b, 1e-5)}
        rms = {"fastdecode-c": c_rms, "fastdecode-numpy": lambda x=x, w=w: ref.rms_norm(x, w, 1e-6)}
        if torch is not None:
            f = torch.nn.functional
            xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
            layer["torch"] = lambda xt=xt, wt=wt, bt=bt, n=n: f.layer_norm(xt, (n,), wt, bt, 1e-5)
            rms["torch"] = lambda xt=xt, wt=wt, n=n: f.rms_norm(xt, (n,), wt, 1e-6)
        out.append(Case("norm", f"layer_norm [{rows}, {n}]", layer, {"rows": rows, "n": n}))
        out.append(Case("norm", f"rms_norm [{rows}, {n}]", rms, {"rows": rows, "n": n}))
    return out
