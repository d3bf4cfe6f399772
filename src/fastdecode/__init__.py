"""fastdecode: fast transformer decoding on the CPU, from Python.

Drop-in kernels (each validates once, then runs the active backend)::

    import fastdecode as fd
    p = fd.softmax(logits)                      # [B, V] float32
    out = fd.attention(q, k_cache, v_cache)     # grouped-query, KV cache
    ids = fd.sample(logits, temperature=0.8, top_p=0.9, rng=gen)  # HF's rules, [B] int64

Backends: ``"c"`` (SIMD C kernels, the default when built) and ``"numpy"``
(the readable reference); see :mod:`fastdecode.backend`.
"""
from .backend import (
    backend_info,
    get_backend,
    get_num_threads,
    get_simd,
    set_backend,
    set_num_threads,
    set_simd,
    use_backend,
)
from .ops import apply_repetition_penalty, argmax, attention, log_softmax, process_logits, sample, softmax

__version__ = "0.1.0"

__all__ = [
    "attention", "log_softmax", "softmax",
    "sample", "argmax", "process_logits", "apply_repetition_penalty",
    "backend_info", "get_backend", "set_backend", "use_backend",
    "get_simd", "set_simd", "get_num_threads", "set_num_threads",
    "__version__",
]
