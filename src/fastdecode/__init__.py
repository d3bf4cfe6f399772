"""fastdecode: fast transformer decoding on the CPU, from Python.

Drop-in kernels (each validates once, then runs the active backend)::

    import fastdecode as fd
    p = fd.softmax(logits)                      # [B, V] float32
    out = fd.attention(q, k_cache, v_cache)     # grouped-query, KV cache

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
from .arrays import empty_aligned
from .ops import attention, log_softmax, softmax

__version__ = "0.1.0"

__all__ = [
    "attention", "log_softmax", "softmax", "empty_aligned",
    "backend_info", "get_backend", "set_backend", "use_backend",
    "get_simd", "set_simd", "get_num_threads", "set_num_threads",
    "__version__",
]
