"""Write a model as a ``.gguf`` file with the ``gguf`` package's ``GGUFWriter``.

``save_gguf(model, path, weights)`` writes what llama.cpp's
``convert_hf_to_gguf.py`` (+ ``llama-quantize``) would: the ``{arch}.*``
hyper-parameters, tensors under llama.cpp's names (llama's Q/K rows
permuted for its interleaved RoPE, GPT-2's matrices ``[out, in]``; Llama 3
RoPE scaling as ``rope_freqs.weight``), and the tokenizer
(:func:`fastdecode.model.gguf_tokenizer.add_to_writer` from the checkpoint's
tokenizer.json, or the ``tokenizer.*`` keys of the GGUF it was loaded from).

``weights`` (llama.cpp's file types): None (each matrix as it is: blocks
written as they lie, float32 as F32); ``f32``; ``f16``/``bf16`` (matrices
16-bit); ``q8_0``/``q4_0`` (every matrix in that block format);
``q4_k_m`` (Q4_K, with Q6_K for ``attn_v``, ``ffn_down`` and the output
head, as llama.cpp's Q4_K_M does for the tensors that matter most; it
gives Q6_K to only half of the ``attn_v``/``ffn_down`` layers). Vectors
(norms, biases) and GPT-2's position table stay F32. A matrix whose rows
do not split into the format's blocks (32 weights, 256 for the K formats)
is written Q8_0 instead, or F16 when not even that fits, as llama.cpp
falls back to another type.
"""
from __future__ import annotations

import os

import numpy as np

from .gguf import ARCHITECTURES
from .gguf_weights import permute

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m")
_ARCH_OF = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
            "Qwen2ForCausalLM": "qwen2"}
_FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M"}


def _matrix_format(weights, role: str, n_in: int):
    """The GGML type of one matrix (role: llama.cpp's tensor name without
    'blk.N.'); None: as it is (blocks kept, float32 as F32)."""
    if weights is None or weights in ("f32", "f16", "bf16"):
        return weights
    fmt = weights
    if weights == "q4_k_m":
        fmt = "q6_K" if role in ("attn_v.weight", "ffn_down.weight", "output.weight") else "q4_K"
    block = 256 if fmt in ("q4_K", "q6_K") else 32
    if n_in % block:
        fmt = "q8_0" if n_in % 32 == 0 else "f16"
    return fmt


def _add(writer, name: str, w, fmt: str = "f32") -> None:
    import gguf

    from ..formats import QuantizedTensor, quantize

    if isinstance(w, QuantizedTensor):  # already blocks: written as they are when the format asks for them
        if w.format == fmt or fmt is None:
            writer.add_tensor(name, w.data, raw_dtype=w.info.gguf_type)
            return
        w = w.dequantize()
    w = np.asarray(w, np.float32)
    if fmt in ("f32", None) or w.ndim != 2:
        writer.add_tensor(name, np.ascontiguousarray(w, np.float32))
    elif fmt == "f16":
        writer.add_tensor(name, w.astype(np.float16))
    else:
        qt = quantize(w, fmt)
        writer.add_tensor(name, qt.data, raw_dtype=gguf.GGMLQuantizationType[qt.info.name.upper()])


def _rows(w, start: int, stop: int):
    """Rows [start, stop) of a float matrix or a QuantizedTensor (whole rows of blocks)."""
    from ..formats import QuantizedTensor

    if isinstance(w, QuantizedTensor):
        return QuantizedTensor(w.format, (stop - start, w.shape[1]), w.data[start:stop])
    return w[start:stop]


def _permuted(w, n_heads: int):
    from ..formats import QuantizedTensor

    if isinstance(w, QuantizedTensor):
        return QuantizedTensor(w.format, w.shape, permute(w.data, n_heads))
    return permute(np.asarray(w), n_heads)


def save_gguf(model, path: str, weights: str = "f32") -> None:
    """Write ``model`` to ``path`` as GGUF (see the module doc). ValueError for
    an unknown ``weights`` or an architecture GGUF cannot describe."""
    import gguf

    if weights is not None and weights not in WEIGHT_TYPES:
        raise ValueError(f"weights must be None (as they are) or one of {', '.join(WEIGHT_TYPES)}; got {weights!r}")
    c = model.config
    arch = _ARCH_OF.get(c.architecture)
    if arch is None or arch not in ARCHITECTURES:
        raise ValueError(f"cannot write {c.architecture} to GGUF; fastdecode writes {', '.join(_ARCH_OF)}")
    tmp = path + ".partial"
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _hyperparameters(writer, model, arch, weights)
        _tokenizer(writer, model)
        _tensors(writer, model, arch, weights)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)  # a reader never sees half a file


def _hyperparameters(writer, model, arch: str, weights: str) -> None:
    import gguf

    c = model.config
    writer.add_name(os.path.basename(os.path.normpath(model.path or "model")))
    writer.add_context_length(c.max_positions)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    if weights is not None:
        writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[weights]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if arch == "gpt2":
        writer.add_layer_norm_eps(c.norm_eps)
        return
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    if c.head_dim * c.num_heads != c.hidden_size:
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    rope = (c.rope or {}).get("rope_type")
    if rope == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(c.rope["factor"]))


def _tokenizer(writer, model) -> None:
    from . import gguf_tokenizer

    fields = getattr(model, "gguf_tokenizer_fields", None)
    if fields:  # loaded from a GGUF: its tokenizer keys, exactly as they were
        for key, (value, types) in fields.items():
            sub = types[-1] if len(types) > 1 else None
            writer.add_key_value(key, value, types[0], sub_type=sub)
        return
    tok = model.tokenizer
    if tok is None or not getattr(tok, "path", None) or not str(tok.path).endswith(".json"):
        raise ValueError(f"{model.path}: no tokenizer.json to write into the GGUF (llama.cpp needs the vocabulary)")
    gguf_tokenizer.add_to_writer(writer, os.path.dirname(tok.path), tok.path, model.config.vocab_size)


def _tensors(writer, model, arch: str, weights: str) -> None:
    c, w = model.config, model.weights
    hq, hkv, f = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size

    def matrix(name, m, role):
        _add(writer, name, m, _matrix_format(weights, role, m.shape[1]))

    matrix("token_embd.weight", w.embed, "token_embd.weight")
    if w.positions is not None:
        _add(writer, "position_embd.weight", w.positions)
    _add(writer, "output_norm.weight", w.final_norm)
    if w.final_norm_bias is not None:
        _add(writer, "output_norm.bias", w.final_norm_bias)
    if w.head is not w.embed:
        matrix("output.weight", w.head, "output.weight")
    if arch == "llama" and c.rope and c.rope.get("rope_type") in ("llama3", "freq_factors"):
        _add(writer, "rope_freqs.weight", _rope_freqs(c))
    for i, layer in enumerate(w.layers):
        b = f"blk.{i}."
        _add(writer, b + "attn_norm.weight", layer.attn_norm)
        _add(writer, b + "ffn_norm.weight", layer.mlp_norm)
        if arch == "gpt2":
            _add(writer, b + "attn_norm.bias", layer.attn_norm_bias)
            _add(writer, b + "ffn_norm.bias", layer.mlp_norm_bias)
            matrix(b + "attn_qkv.weight", layer.qkv, "attn_qkv.weight")
            _add(writer, b + "attn_qkv.bias", layer.qkv_bias)
            matrix(b + "attn_output.weight", layer.out, "attn_output.weight")
            _add(writer, b + "attn_output.bias", layer.out_bias)
            matrix(b + "ffn_up.weight", layer.up, "ffn_up.weight")
            _add(writer, b + "ffn_up.bias", layer.up_bias)
            matrix(b + "ffn_down.weight", layer.down, "ffn_down.weight")
            _add(writer, b + "ffn_down.bias", layer.down_bias)
            continue
        q, k, v = _rows(layer.qkv, 0, hq), _rows(layer.qkv, hq, hq + hkv), _rows(layer.qkv, hq + hkv, hq + 2 * hkv)
        if arch == "llama":  # llama.cpp rotates interleaved pairs: its converter permutes Q and K rows
            q, k = _permuted(q, c.num_heads), _permuted(k, c.num_kv_heads)
        matrix(b + "attn_q.weight", q, "attn_q.weight")
        matrix(b + "attn_k.weight", k, "attn_k.weight")
        matrix(b + "attn_v.weight", v, "attn_v.weight")
        if layer.qkv_bias is not None:
            qb, kb, vb = layer.qkv_bias[:hq], layer.qkv_bias[hq:hq + hkv], layer.qkv_bias[hq + hkv:]
            if arch == "llama":
                qb, kb = permute(qb, c.num_heads), permute(kb, c.num_kv_heads)
            _add(writer, b + "attn_q.bias", qb)
            _add(writer, b + "attn_k.bias", kb)
            _add(writer, b + "attn_v.bias", vb)
        matrix(b + "attn_output.weight", layer.out, "attn_output.weight")
        if layer.out_bias is not None:
            _add(writer, b + "attn_output.bias", layer.out_bias)
        matrix(b + "ffn_gate.weight", _rows(layer.up, 0, f), "ffn_gate.weight")
        matrix(b + "ffn_up.weight", _rows(layer.up, f, 2 * f), "ffn_up.weight")
        matrix(b + "ffn_down.weight", layer.down, "ffn_down.weight")
        if layer.up_bias is not None:
            _add(writer, b + "ffn_gate.bias", layer.up_bias[:f])
            _add(writer, b + "ffn_up.bias", layer.up_bias[f:])
        if layer.down_bias is not None:
            _add(writer, b + "ffn_down.bias", layer.down_bias)


def _rope_freqs(c) -> np.ndarray:  # -> float32 [head_dim // 2]
    """llama.cpp's rope_freqs.weight: each pair's unscaled frequency over its scaled one."""
    import dataclasses

    from .config import rope_frequencies

    plain = rope_frequencies(dataclasses.replace(c, rope=None))
    return (plain / rope_frequencies(c)).astype(np.float32)
