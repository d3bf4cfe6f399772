"""Read ``.gguf`` models (llama.cpp's file format) with the ``gguf`` package.

``load_gguf(path)`` memory-maps the file with ``gguf.GGUFReader`` after
checking every tensor record against the file (type known, dimensions
positive, the first a multiple of the type's block, data inside the file and
not overlapping the next tensor), then reads:

- hyper-parameters from the ``{arch}.*`` keys, ``arch`` being
  ``general.architecture``: ``llama`` (Mistral files declare it too),
  ``qwen2``, ``gpt2``; any other is a ValueError naming it;
- tensors under llama.cpp's names (``blk.N.attn_q.weight``...), mapped to the
  Hugging Face names :mod:`fastdecode.model.weights` arranges, so a GGUF and
  a checkpoint directory go through one loader;
- the tokenizer from ``tokenizer.ggml.*`` (:mod:`.gguf_tokenizer`).

Layout differences handled here:

- llama's Q and K rows: llama.cpp's converter permutes them (each head's
  rotary pairs (i, i + D/2) become neighbours, for ggml's interleaved RoPE);
  fastdecode rotates Hugging Face's way, so :func:`unpermute` puts them back
  at load (row moves only: block-quantized rows move as they are). Qwen2
  files are not permuted (llama.cpp runs them with NeoX RoPE).
- GPT-2: GGUF stores every matrix ``[out, in]`` (ne = [in, out]), which is
  already fastdecode's layout.
- The output head is ``token_embd.weight`` when ``output.weight`` is absent.
- Llama 3 RoPE scaling is stored as ``rope_freqs.weight`` (one divisor per
  rotary pair); linear scaling as ``rope.scaling.type``/``factor``.

A tensor whose GGML type has no fastdecode kernels (Q5_0, Q5_K, Q2_K, IQ*...)
is dequantized at load with ``gguf.quants.dequantize``, with one warning
naming the types.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from .config import ModelConfig
from .weights import WeightError, bf16_to_f32

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
PERMUTED = ("llama",)
# GGML types that are no weight format (integers, F64) or that gguf.quants cannot dequantize
UNREADABLE_TYPES = ("I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K", "Q1_0")  # architectures whose Q/K rows llama.cpp's converter permutes

# llama.cpp tensor name (per block: "blk.{i}." prefix) -> Hugging Face name
_LLAMA_NAMES = {
    "token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias", "ffn_down.bias": "mlp.down_proj.bias",
}
_GPT2_NAMES = {
    "token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight", "output_norm.weight": "ln_f.weight",
    "output_norm.bias": "ln_f.bias", "output.weight": "lm_head.weight",
}
_GPT2_BLOCK = {
    "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias", "ffn_norm.weight": "ln_2.weight",
    "ffn_norm.bias": "ln_2.bias", "attn_qkv.weight": "attn.c_attn.weight", "attn_qkv.bias": "attn.c_attn.bias",
    "attn_output.weight": "attn.c_proj.weight", "attn_output.bias": "attn.c_proj.bias",
    "ffn_up.weight": "mlp.c_fc.weight", "ffn_up.bias": "mlp.c_fc.bias",
    "ffn_down.weight": "mlp.c_proj.weight", "ffn_down.bias": "mlp.c_proj.bias",
}


class GGUFError(ValueError):
    """The file is not a GGUF fastdecode can read (the message names the key or tensor)."""


# ---------------------------------------------------------------------------
# The file: header, metadata, tensor records (validated before any data use)
# ---------------------------------------------------------------------------

def is_gguf(path: str) -> bool:
    """True for a file that starts with GGUF's magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def open_reader(path: str):
    """A ``gguf.GGUFReader`` over ``path`` whose tensors are all checked to
    lie inside the file; GGUFError otherwise."""
    import gguf

    class _CheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            _check_tensor_records(path, len(self.data), start_offs, fields)
            return super()._build_tensors(start_offs, fields)

    if not is_gguf(path):
        raise GGUFError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    try:
        return _CheckedReader(path, "r")
    except GGUFError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        raise GGUFError(f"{path}: malformed GGUF header or metadata (truncated or corrupt): "
                        f"{type(exc).__name__}: {exc}") from None


def _check_tensor_records(path: str, file_size: int, start: int, fields) -> None:
    """Every tensor's type, dimensions and data range, before the reader maps any of it."""
    import gguf

    spans = []
    for field in fields:
        _, name_data, _, dims, raw_type, offset = field.parts
        name = bytes(name_data).decode("utf-8", "replace")
        try:
            qtype = gguf.GGMLQuantizationType(int(raw_type[0]))
        except ValueError:
            raise GGUFError(f"{path}: tensor {name!r} has unknown GGML type {int(raw_type[0])}") from None
        if qtype not in gguf.GGML_QUANT_SIZES:
            raise GGUFError(f"{path}: tensor {name!r} has GGML type {qtype.name} with no known block size")
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        dims = [int(d) for d in dims]
        if not 1 <= len(dims) <= 4 or min(dims) < 1:
            raise GGUFError(f"{path}: tensor {name!r} has dimensions {dims} (1 to 4, each at least 1)")
        if dims[0] % block:
            raise GGUFError(f"{path}: tensor {name!r} ({qtype.name}) has {dims[0]} columns, not a multiple of the "
                            f"type's block of {block}")
        n = math.prod(dims)
        if n > file_size * 8:  # no type packs more than 8 weights per byte: these dims cannot fit
            raise GGUFError(f"{path}: tensor {name!r} claims {dims} elements, more than the file holds")
        nbytes = n // block * type_size
        begin = start + int(offset[0])
        if begin + nbytes > file_size:
            raise GGUFError(f"{path}: tensor {name!r} ({qtype.name} {dims}: {nbytes} bytes at offset {begin}) "
                            f"runs past the end of the file ({file_size} bytes): truncated, or a wrong offset or "
                            "shape")
        spans.append((begin, begin + nbytes, name))
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if e0 > b1:
            raise GGUFError(f"{path}: tensor {n0!r} (bytes {b0}..{e0}) overlaps tensor {n1!r} (from {b1}): its byte "
                            "length disagrees with its type and shape, or an offset is wrong")


def metadata(reader) -> dict:
    """Every key -> its Python value (str, int, float, bool, or list)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            raise GGUFError(f"metadata key {key!r} holds an unreadable value: {exc}") from None
    return out


# ---------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------

def _key(meta: dict, key: str, kind=int, default=None, where=""):
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"{where}GGUF metadata lacks the required key {key!r}")
    if isinstance(value, list) and kind is not list:
        raise GGUFError(f"{where}key {key!r} holds a list; fastdecode reads one value")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise GGUFError(f"{where}key {key!r} must be a positive integer; got {value!r}")
    if kind is float and not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise GGUFError(f"{where}key {key!r} must be a finite number; got {value!r}")
    return kind(value)


def config_from_metadata(meta: dict, tensors: dict, where: str = "") -> ModelConfig:
    """The ModelConfig that a GGUF's ``{arch}.*`` keys and tensor names describe."""
    arch = meta.get("general.architecture")
    if arch is None:
        raise GGUFError(f"{where}GGUF metadata lacks the required key 'general.architecture'")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{where}architecture {arch!r} is not supported; fastdecode runs {', '.join(ARCHITECTURES)}")
    k = f"{arch}."
    d = _key(meta, k + "embedding_length", where=where)
    heads = _key(meta, k + "attention.head_count", where=where)
    kv_heads = _key(meta, k + "attention.head_count_kv", default=heads, where=where)
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{where}the file has no tensor 'token_embd.weight'")
    vocab = int(tensors["token_embd.weight"][-1])
    tokens = meta.get("tokenizer.ggml.tokens")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    common = dict(
        vocab_size=vocab, hidden_size=d, num_layers=_key(meta, k + "block_count", where=where), num_heads=heads,
        num_kv_heads=kv_heads, intermediate_size=_key(meta, k + "feed_forward_length", where=where),
        max_positions=_key(meta, k + "context_length", where=where), tie_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(e for e in (eos, meta.get("tokenizer.ggml.eot_token_id")) if isinstance(e, int)),
    )
    if tokens is not None and len(tokens) > vocab:
        raise GGUFError(f"{where}tokenizer.ggml.tokens lists {len(tokens)} tokens for {vocab} embeddings")
    if arch == "gpt2":
        if d % heads:
            raise GGUFError(f"{where}{k}embedding_length ({d}) is not a multiple of {k}attention.head_count ({heads})")
        config = ModelConfig(
            architecture=ARCHITECTURES[arch], family="gpt2", head_dim=d // heads,
            norm_eps=_key(meta, k + "attention.layer_norm_epsilon", float, 1e-5, where), activation="gelu_new",
            qkv_bias=True, out_bias=True, mlp_bias=True, attn_scale=1.0 / math.sqrt(d // heads), **common)
    else:
        head_dim = _key(meta, k + "attention.key_length", default=meta.get(k + "rope.dimension_count", d // heads),
                        where=where)
        config = ModelConfig(
            architecture=ARCHITECTURES[arch], family="llama", head_dim=head_dim,
            norm_eps=_key(meta, k + "attention.layer_norm_rms_epsilon", float, 1e-6, where), activation="silu",
            qkv_bias="blk.0.attn_q.bias" in tensors, out_bias="blk.0.attn_output.bias" in tensors,
            mlp_bias="blk.0.ffn_up.bias" in tensors, attn_scale=1.0 / math.sqrt(head_dim),
            rope_theta=_key(meta, k + "rope.freq_base", float, 10000.0, where), rope=_rope(meta, k, where),
            **common)
    try:
        config._check()
    except ValueError as exc:
        raise GGUFError(f"{where}{exc}") from None
    return config


def _rope(meta: dict, k: str, where: str):
    kind = meta.get(k + "rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _key(meta, k + "rope.scaling.factor", float, where=where)}
    raise GGUFError(f"{where}{k}rope.scaling.type {kind!r} is not supported (fastdecode: none, linear, and "
                    "Llama 3's rope_freqs.weight)")


# ---------------------------------------------------------------------------
# Tensors, under Hugging Face names, for weights.load_weights
# ---------------------------------------------------------------------------

def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:  # [H * D, ...] -> [H * D, ...]
    """Undo llama.cpp's ``permute`` (convert_hf_to_gguf.py) of Q or K rows:
    within each head, row 2i+j goes back to row j*D/2 + i."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:  # [H * D, ...] -> [H * D, ...]
    """llama.cpp's ``permute``: Hugging Face's Q/K rows -> GGUF's."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """The tensors of a GGUF file by Hugging Face name, as weights.Checkpoint
    offers them: ``names()``, ``in``, ``shape(name)``, ``get(name, shape)``
    (float32, Q/K rows un-permuted)."""

    def __init__(self, path: str, reader, config: ModelConfig, arch: str):
        import gguf

        self.directory = path
        self._config = config
        names, block = (_GPT2_NAMES, _GPT2_BLOCK) if arch == "gpt2" else (_LLAMA_NAMES, _LLAMA_BLOCK)
        prefix = "transformer." if arch == "gpt2" else "model."
        self._tensors = {}
        self._permuted = {}
        kept = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
        self.dequantized = set()
        for t in reader.tensors:
            hf = _hf_name(t.name, names, block, prefix)
            if hf is None:
                continue  # rope_freqs.weight and the like are read by name where needed
            self._tensors[hf] = t
            if arch in PERMUTED and t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
                self._permuted[hf] = config.num_heads if "attn_q" in t.name else config.num_kv_heads
            if t.tensor_type not in kept:
                if t.tensor_type.name in UNREADABLE_TYPES:
                    raise GGUFError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which fastdecode "
                                    "does not read (a weight must be a float or a block-quantized type)")
                self.dequantized.add(t.tensor_type.name)

    def names(self) -> set:
        return set(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple:
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def get(self, name: str, shape: tuple) -> np.ndarray:
        """Tensor ``name`` as float32 ``shape`` (GGUF's dimensions reversed)."""
        import gguf

        t = self._tensors.get(name)
        if t is None:
            raise WeightError(f"{self.directory}: the file has no tensor for {name!r}")
        got = self.shape(name)
        if got != tuple(shape):
            if name.startswith("transformer.h.") and got == tuple(shape)[::-1]:  # Conv1D's [in, out], see below
                got = tuple(shape)
            else:
                raise WeightError(f"{self.directory}: tensor {t.name!r} has shape {list(got)}; the metadata implies "
                                  f"{list(shape)}")
        qtype = t.tensor_type
        if qtype == gguf.GGMLQuantizationType.F32:
            w = np.asarray(t.data, np.float32)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w = np.asarray(t.data).astype(np.float32)
        elif qtype == gguf.GGMLQuantizationType.BF16:
            w = bf16_to_f32(np.ascontiguousarray(t.data).view("<u2"))
        else:
            w = np.asarray(gguf.quants.dequantize(t.data, qtype), np.float32)
        w = w.reshape(self.shape(name))
        if name in self._permuted:
            w = unpermute(w, self._permuted[name])
        if name.startswith("transformer.h.") and w.ndim == 2:
            w = w.T  # weights.py reads GPT-2 matrices in Conv1D's [in, out] and transposes them back
        return w


def _hf_name(name: str, names: dict, block: dict, prefix: str):
    if name in names:
        return ("" if name == "output.weight" else prefix) + names[name]
    if name.startswith("blk."):
        i, _, rest = name[4:].partition(".")
        if i.isdigit() and rest in block:
            return f"{prefix}{'h' if prefix == 'transformer.' else 'layers'}.{int(i)}.{block[rest]}"
    return None


def rope_factors(reader, config: ModelConfig, where: str):
    """Llama 3 scaling: ``rope_freqs.weight`` divides each rotary pair's frequency."""
    t = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if t is None:
        return config
    import dataclasses

    if t.tensor_type.name != "F32" or t.n_elements != config.head_dim // 2:
        raise GGUFError(f"{where}tensor 'rope_freqs.weight' must be F32 [{config.head_dim // 2}]; got "
                        f"{t.tensor_type.name} {[int(d) for d in t.shape]}")
    factors = np.asarray(t.data, np.float64).reshape(-1)
    if not (np.isfinite(factors).all() and (factors > 0).all()):
        raise GGUFError(f"{where}tensor 'rope_freqs.weight' holds non-positive or non-finite factors")
    return dataclasses.replace(config, rope={"rope_type": "freq_factors", "factors": tuple(factors.tolist())})


def load_gguf(path: str):
    """A :class:`fastdecode.model.Model` from a ``.gguf`` file (see the module doc)."""
    from . import Model
    from ..tokenizer import Tokenizer
    from . import gguf_tokenizer
    from .weights import load_weights

    where = f"{path}: "
    reader = open_reader(path)
    meta = metadata(reader)
    tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    config = rope_factors(reader, config_from_metadata(meta, tensors, where), where)
    ckpt = GGUFCheckpoint(path, reader, config, meta["general.architecture"])
    if ckpt.dequantized:
        warnings.warn(f"{path}: tensors of type {', '.join(sorted(ckpt.dequantized))} have no fastdecode kernels; "
                      "dequantized at load", stacklevel=3)
    weights = load_weights(config, ckpt)
    tokenizer = None
    if "tokenizer.ggml.model" in meta:
        try:
            tok, info = gguf_tokenizer.build(meta)
        except ValueError as exc:
            raise GGUFError(f"{where}{exc}") from None
        tokenizer = Tokenizer.from_tokenizers(tok, info["bos"], info["eos"], path=path,
                                              chat_template=info["chat_template"])
    model = Model(config, weights, tokenizer, {}, config.eos_token_ids, path)
    # the tokenizer keys as the file had them (value, GGUF value types), for Model.save
    model.gguf_tokenizer_fields = {k: (v, list(reader.fields[k].types)) for k, v in meta.items()
                                   if k.startswith("tokenizer.")}
    return model
