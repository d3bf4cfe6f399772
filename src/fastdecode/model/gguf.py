"""Read ``.gguf`` models (llama.cpp's file format) with the ``gguf`` package.

``load_gguf(path)`` memory-maps the file with ``gguf.GGUFReader`` after
checking every tensor record against the file (type known, dimensions
positive, the first a multiple of the type's block, data inside the file and
not overlapping the next tensor), then reads:

- hyper-parameters from the ``{arch}.*`` keys, ``arch`` being
  ``general.architecture``: ``llama`` (Mistral files declare it too),
  ``qwen2``, ``gpt2``; any other is a ValueError naming it;
- tensors under llama.cpp's names (``blk.N.attn_q.weight``...), arranged as
  fastdecode's Weights by :mod:`.gguf_weights` (block formats kept);
- the tokenizer from ``tokenizer.ggml.*`` (:mod:`.gguf_tokenizer`).

Layout differences handled here:

- llama's Q and K rows: llama.cpp's converter permutes them (each head's
  rotary pairs (i, i + D/2) become neighbours, for ggml's interleaved RoPE);
  fastdecode rotates Hugging Face's way, so ``gguf_weights.unpermute`` puts them back
  at load (row moves only: block-quantized rows move as they are). Qwen2
  files are not permuted (llama.cpp runs them with NeoX RoPE).
- GPT-2: GGUF stores every matrix ``[out, in]`` (ne = [in, out]), which is
  already fastdecode's layout.
- The output head is ``token_embd.weight`` when ``output.weight`` is absent.
- Llama 3 RoPE scaling is stored as ``rope_freqs.weight`` (one divisor per
  rotary pair); linear scaling as ``rope.scaling.type``/``factor``.

A tensor whose GGML type has no fastdecode kernels (Q5_0, Q5_K, Q2_K, IQ*...)
is dequantized at load with ``gguf.quants.dequantize`` (kept as f16), with
one warning naming the types; integer types are refused by name.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .config import ModelConfig

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
PERMUTED = ("llama",)  # architectures whose Q/K rows llama.cpp's converter permutes
# GGML types that are no weight format (integers, F64) or that gguf.quants cannot dequantize
UNREADABLE_TYPES = ("I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K", "Q1_0")


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


def load_gguf(path: str, weights: str | None = None):
    """A :class:`fastdecode.model.Model` from a ``.gguf`` file (see the module
    doc). ``weights``: None keeps each tensor's format; a format name
    quantizes a file of float tensors at load (as for a directory)."""
    from . import Model, gguf_tokenizer, quantize
    from ..tokenizer import Tokenizer
    from .gguf_weights import GGUFTensors, assemble

    where = f"{path}: "
    reader = open_reader(path)
    meta = metadata(reader)
    tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    config = rope_factors(reader, config_from_metadata(meta, tensors, where), where)
    arch = meta["general.architecture"]
    found = GGUFTensors(path, reader, config, arch)
    model_weights = assemble(found, config, arch)
    if found.dequantized:
        warnings.warn(f"{path}: tensors of type {', '.join(sorted(found.dequantized))} have no fastdecode kernels; "
                      "dequantized at load", stacklevel=3)
    if weights is not None:
        if not found.all_float:
            raise ValueError(f"{path}: its tensors are not all F32; load it with weights=None (each tensor "
                             f"keeps its format) rather than weights={weights!r}")
        model_weights = quantize.quantize_weights(model_weights, weights)
    tokenizer = None
    if "tokenizer.ggml.model" in meta:
        try:
            tok, info = gguf_tokenizer.build(meta)
        except ValueError as exc:
            raise GGUFError(f"{where}{exc}") from None
        tokenizer = Tokenizer.from_tokenizers(tok, info["bos"], info["eos"], path=path,
                                              chat_template=info["chat_template"])
    model = Model(config, model_weights, tokenizer, {}, config.eos_token_ids, path)
    # the tokenizer keys as the file had them (value, GGUF value types), for Model.save
    model.gguf_tokenizer_fields = {k: (v, list(reader.fields[k].types)) for k, v in meta.items()
                                   if k.startswith("tokenizer.")}
    return model
