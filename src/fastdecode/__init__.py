"""fastdecode: fast transformer decoding on the CPU, from Python.

Drop-in kernels (each validates once, then runs the active backend)::

    import fastdecode as fd
    p = fd.softmax(logits)                      # [B, V] float32
    out = fd.attention(q, k_cache, v_cache)     # grouped-query, KV cache
    ids = fd.sample(logits, temperature=0.8, top_p=0.9, rng=gen)  # HF's rules, [B] int64

Models (loaded on first use, so ``import fastdecode`` stays fast)::

    model = fd.load("path/to/hf-checkpoint")    # GPT-2, Llama, Qwen2, Mistral
    print(model.generate("Hello", max_new_tokens=20).text)

Backends: ``"c"`` (SIMD C kernels, the default when built) and ``"numpy"``
(the readable reference); see :mod:`fastdecode.backend`.
"""
from .backend import (
    backend_info,
    get_backend,
    get_num_threads,
    get_simd,
    get_worker_spin,
    set_backend,
    set_num_threads,
    set_simd,
    set_worker_spin,
    use_backend,
)
from .arrays import empty_aligned
from .formats import QuantizedTensor, dequantize, quantize
from .ops import (
    apply_repetition_penalty,
    argmax,
    attention,
    layer_norm,
    linear,
    log_softmax,
    process_logits,
    rms_norm,
    sample,
    softmax,
)

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "load": "fastdecode.model", "Model": "fastdecode.model", "KVCache": "fastdecode.model",
    "ModelConfig": "fastdecode.model", "GenerationConfig": "fastdecode.generation",
    "GenerationResult": "fastdecode.generation", "StreamToken": "fastdecode.generation",
    "Tokenizer": "fastdecode.tokenizer",
    "Session": "fastdecode.session", "ChatTemplate": "fastdecode.chat", "ChatTemplateError": "fastdecode.chat",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastdecode' has no attribute {name!r}")


__all__ = [
    "attention", "linear", "layer_norm", "rms_norm", "log_softmax", "softmax", "empty_aligned",
    "QuantizedTensor", "quantize", "dequantize",
    "sample", "argmax", "process_logits", "apply_repetition_penalty", *_LAZY,
    "backend_info", "get_backend", "set_backend", "use_backend",
    "get_simd", "set_simd", "get_num_threads", "set_num_threads", "get_worker_spin", "set_worker_spin",
    "__version__",
]
