"""A GGUF's tensors arranged as fastdecode's :class:`~.weights.Weights`.

Formats: F32 matrices are used from the memory map as they lie; F16, BF16,
Q8_0, Q4_0, Q4_K and Q6_K matrices become :class:`~fastdecode.formats.QuantizedTensor`
over the mapped blocks (no re-encoding; no copy unless rows move or are
fused). Other block types (Q5_0, Q5_K, Q2_K, IQ*...) are dequantized with
``gguf.quants.dequantize`` and kept as f16 (float32 where f16 would
overflow); the caller warns once, naming them.

fastdecode fuses Q, K, V into one matrix and gate, up into another: rows
of blocks in one format are concatenated as they are. When the parts come
in different formats (llama.cpp's Q4_K_M gives ``attn_v`` Q6_K and
``attn_q``/``attn_k`` Q4_K in some layers) the fused matrix is their exact
dequantized values in float32, noted in ``weights.notes``.

Names: llama.cpp's (``blk.N.attn_q.weight``). :func:`hf_name` maps them to
Hugging Face's for comparisons with transformers.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..arrays import empty_aligned
from .gguf import PERMUTED, UNREADABLE_TYPES, GGUFError
from .weights import Layer, Weights, _fuse, _read_only

KEPT = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")  # block types used as they lie (F32: a float32 array)

# llama.cpp name -> Hugging Face name (per block: after "blk.N.")
_TOP = {"llama": {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"},
        "gpt2": {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
                 "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
                 "output.weight": "lm_head.weight"}}
_BLOCK = {
    "llama": ("model.layers.{}.", {
        "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
        "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight"}),
    "gpt2": ("transformer.h.{}.", {
        "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias", "ffn_norm.weight": "ln_2.weight",
        "ffn_norm.bias": "ln_2.bias", "attn_qkv.weight": "attn.c_attn.weight", "attn_qkv.bias": "attn.c_attn.bias",
        "attn_output.weight": "attn.c_proj.weight", "attn_output.bias": "attn.c_proj.bias",
        "ffn_up.weight": "mlp.c_fc.weight", "ffn_up.bias": "mlp.c_fc.bias",
        "ffn_down.weight": "mlp.c_proj.weight", "ffn_down.bias": "mlp.c_proj.bias"}),
}


def hf_name(name: str, arch: str):
    """The Hugging Face name of llama.cpp tensor ``name`` (None if it has none).
    GPT-2's Hugging Face matrices are Conv1D ``[in, out]``, GGUF's ``[out, in]``."""
    family = "gpt2" if arch == "gpt2" else "llama"
    if name in _TOP[family]:
        return _TOP[family][name]
    prefix, block = _BLOCK[family]
    if name.startswith("blk."):
        i, _, rest = name[4:].partition(".")
        if i.isdigit() and rest in block:
            return prefix.format(int(i)) + block[rest]
    return None


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:  # [H * D, ...] -> [H * D, ...]
    """Undo llama.cpp's ``permute`` (convert_hf_to_gguf.py) of Q or K rows:
    within each head, row 2i+j goes back to row j*D/2 + i."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:  # [H * D, ...] -> [H * D, ...]
    """llama.cpp's ``permute``: Hugging Face's Q/K rows -> GGUF's."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFTensors:
    """A GGUF's tensors by llama.cpp name: ``matrix`` (kept formats),
    ``vector`` and ``float`` (float32), Q/K rows un-permuted for llama."""

    def __init__(self, path: str, reader, config, arch: str):
        self.path, self.config, self.arch = path, config, arch
        self._t = {t.name: t for t in reader.tensors}
        self.dequantized = set()
        for t in reader.tensors:
            if t.tensor_type.name in UNREADABLE_TYPES:
                raise GGUFError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which fastdecode does not "
                                "read (a weight must be a float or a block-quantized type)")
        self.all_float = all(t.tensor_type.name == "F32" for t in reader.tensors)  # can be quantized at load

    def __contains__(self, name: str) -> bool:
        return name in self._t

    def names(self) -> list:
        return list(self._t)

    def _tensor(self, name: str, shape: tuple):
        t = self._t.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: the file has no tensor {name!r}")
        got = tuple(int(d) for d in reversed(t.shape))
        if got != tuple(shape):
            raise GGUFError(f"{self.path}: tensor {name!r} has shape {list(got)} ([out, in]); the metadata implies "
                            f"{list(shape)}")
        return t

    def _heads(self, name: str):
        """Heads whose rows llama.cpp permuted in tensor `name` (None: not permuted)."""
        if self.arch not in PERMUTED:
            return None
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            return self.config.num_heads
        if name.endswith(("attn_k.weight", "attn_k.bias")):
            return self.config.num_kv_heads
        return None

    def float(self, name: str, shape: tuple) -> np.ndarray:
        """Tensor ``name`` as float32 ``shape`` (GGUF's dimensions reversed), dequantized, un-permuted."""
        import gguf

        t = self._tensor(name, shape)
        kind = t.tensor_type.name
        if kind == "F32":
            w = np.asarray(t.data, np.float32).reshape(shape)
        elif kind == "F16":
            w = np.asarray(t.data).astype(np.float32).reshape(shape)
        else:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        heads = self._heads(name)
        return w if heads is None else unpermute(w, heads)

    def vector(self, name: str, n: int) -> np.ndarray:  # -> float32 [n]
        return self.float(name, (n,))

    def matrix(self, name: str, n_out: int, n_in: int):
        """Tensor ``name`` ``[n_out, n_in]``: a QuantizedTensor in its own format
        (KEPT), a float32 array (F32), or f16 blocks dequantized from another type."""
        t = self._tensor(name, (n_out, n_in))
        kind = t.tensor_type.name
        if kind == "F32":
            return self.float(name, (n_out, n_in))
        if kind not in KEPT:
            self.dequantized.add(kind)
            w = self.float(name, (n_out, n_in))
            with np.errstate(over="ignore"):
                fits = np.isfinite(w.astype(np.float16)).all()
            return formats.quantize(w, "f16") if fits else w
        data = np.asarray(t.data).view(np.uint8).reshape(n_out, -1)  # the mapped blocks, rows [out, row bytes]
        heads = self._heads(name)
        if heads is not None:
            data = unpermute(data, heads)  # whole rows of blocks move
        return formats.from_gguf(t.tensor_type, (n_out, n_in), data)


def fuse(mats: list, what: str, notes: list):
    """Row-concatenation of float32 arrays or same-format QuantizedTensors."""
    if all(isinstance(m, np.ndarray) for m in mats):
        return _fuse(*mats)
    kinds = {m.format if isinstance(m, formats.QuantizedTensor) else "f32" for m in mats}
    if len(kinds) == 1:
        data = empty_aligned((sum(m.shape[0] for m in mats), mats[0].data.shape[1]), np.uint8)
        np.concatenate([m.data for m in mats], axis=0, out=data)
        return formats.QuantizedTensor(mats[0].format, (data.shape[0], mats[0].shape[1]), data)
    notes.append(f"{what}: parts in {', '.join(sorted(kinds))}; fused as their exact values in float32")
    return _fuse(*[m.dequantize() if isinstance(m, formats.QuantizedTensor) else m for m in mats])


def assemble(tensors: GGUFTensors, config, arch: str) -> Weights:
    """fastdecode's Weights from a GGUF's tensors (see the module doc)."""
    c = config
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    hq, hkv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    mat, vec, notes = tensors.matrix, tensors.vector, []
    layers = []
    for i in range(c.num_layers):
        b = f"blk.{i}."
        if arch == "gpt2":
            layers.append(Layer(
                attn_norm=vec(b + "attn_norm.weight", d), attn_norm_bias=vec(b + "attn_norm.bias", d),
                qkv=mat(b + "attn_qkv.weight", 3 * d, d), qkv_bias=vec(b + "attn_qkv.bias", 3 * d),
                out=mat(b + "attn_output.weight", d, d), out_bias=vec(b + "attn_output.bias", d),
                mlp_norm=vec(b + "ffn_norm.weight", d), mlp_norm_bias=vec(b + "ffn_norm.bias", d),
                up=mat(b + "ffn_up.weight", f, d), up_bias=vec(b + "ffn_up.bias", f),
                down=mat(b + "ffn_down.weight", d, f), down_bias=vec(b + "ffn_down.bias", d)))
            continue
        qkv_bias = None
        if c.qkv_bias:
            qkv_bias = np.concatenate([vec(b + "attn_q.bias", hq), vec(b + "attn_k.bias", hkv),
                                       vec(b + "attn_v.bias", hkv)])
        layers.append(Layer(
            attn_norm=vec(b + "attn_norm.weight", d), attn_norm_bias=None,
            qkv=fuse([mat(b + "attn_q.weight", hq, d), mat(b + "attn_k.weight", hkv, d),
                      mat(b + "attn_v.weight", hkv, d)], f"layers.{i}.qkv", notes),
            qkv_bias=qkv_bias,
            out=mat(b + "attn_output.weight", d, hq),
            out_bias=vec(b + "attn_output.bias", d) if c.out_bias else None,
            mlp_norm=vec(b + "ffn_norm.weight", d), mlp_norm_bias=None,
            up=fuse([mat(b + "ffn_gate.weight", f, d), mat(b + "ffn_up.weight", f, d)], f"layers.{i}.up", notes),
            up_bias=np.concatenate([vec(b + "ffn_gate.bias", f), vec(b + "ffn_up.bias", f)]) if c.mlp_bias else None,
            down=mat(b + "ffn_down.weight", d, f),
            down_bias=vec(b + "ffn_down.bias", d) if c.mlp_bias else None))
    embed = mat("token_embd.weight", v, d)
    head = mat("output.weight", v, d) if "output.weight" in tensors else embed
    gpt2 = arch == "gpt2"
    return _read_only(Weights(
        embed=embed, positions=tensors.float("position_embd.weight", (c.max_positions, d)) if gpt2 else None,
        layers=layers, final_norm=vec("output_norm.weight", d),
        final_norm_bias=vec("output_norm.bias", d) if gpt2 else None, head=head, notes=notes))
