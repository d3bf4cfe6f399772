"""Read a checkpoint's tensors and arrange them once for the decode loop.

Files: ``model.safetensors``, or shards listed by
``model.safetensors.index.json``, read with the ``safetensors`` library
(``safe_open`` memory-maps each file). float32, float16 and bfloat16
tensors are accepted and converted to float32 (NumPy has no bfloat16: its
bits are the high half of a float32, so a 16-bit shift converts them).

Layout: every projection is stored ``[out, in]`` (torch's Linear layout),
C-contiguous, for :func:`fastdecode.ops.linear`: in a decode step each
output is one contiguous weight row dotted with x, so the C kernel reads
each weight as one sequential stream per thread. Q, K and V are fused into
one ``[(Hq + 2 Hkv) D, d]`` matrix, Llama's gate and up projections into
one ``[2 F, d]``. Llama checkpoints are already in this layout (nothing is
transposed at load); GPT-2's Conv1D stores ``[in, out]`` and is transposed
once. The output head is the ``[V, d]`` embedding table itself when tied.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy as np

from ..arrays import empty_aligned
from .config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class WeightError(ValueError):
    """A tensor is missing or has the wrong shape or dtype (the message names it and its file)."""


# ---------------------------------------------------------------------------
# Tensor files
# ---------------------------------------------------------------------------

class Checkpoint:
    """The tensors of a checkpoint directory, by name, read as float32 on demand."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(index):
            weight_map = _weight_map(index)
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            weight_map, files = None, [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} "
                                    "(fastdecode reads safetensors checkpoints)")
        self._handles = {}
        self._file_of: dict[str, str] = {}
        self.read: set[str] = set()  # the names get() has read: the rest is unused
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: shard listed in {INDEX_FILE} is missing")
            try:
                handle = safe_open(path, framework="np")
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise WeightError(f"{path}: not a readable safetensors file: {exc}") from None
            self._handles[path] = handle
            for key in handle.keys():
                self._file_of[key] = path
        if weight_map is not None:
            for key, name in weight_map.items():
                if key not in self._file_of:
                    raise WeightError(f"{os.path.join(directory, name)}: lacks tensor {key!r} that "
                                      f"{INDEX_FILE} places there")

    def names(self) -> set:
        return set(self._file_of)

    def check_all_read(self, strict: bool = True, ignored: tuple = ()) -> None:
        """A tensor the config gives no place to means the config and the file disagree (say
        ``num_hidden_layers: 2`` beside 4 layers): WeightError naming them, or with ``strict=False``
        a warning. Names ending in one of ``ignored`` (buffers some exporters save) pass."""
        unused = sorted(n for n in self.names() - self.read if not n.endswith(ignored))
        if not unused:
            return
        shown = ", ".join(repr(n) for n in unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        message = (f"{self.directory}: {len(unused)} tensor(s) that config.json gives no place to: {shown}; "
                   "does config.json describe this checkpoint?")
        if strict:
            raise WeightError(message + " (fastdecode.load(..., strict=False) loads it anyway, with a warning)")
        import warnings

        warnings.warn(message + " (ignored: strict=False)", UserWarning, stacklevel=4)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple:
        return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

    def get(self, name: str, shape: tuple) -> np.ndarray:
        """Tensor `name` as float32, checked against the shape config.json implies."""
        path = self._file_of.get(name)
        if path is None:
            raise WeightError(f"{self.directory}: the checkpoint has no tensor {name!r}")
        got = self.shape(name)
        self.read.add(name)
        if got != tuple(shape):
            raise WeightError(f"{path}: tensor {name!r} has shape {list(got)}; config.json implies {list(shape)}")
        dtype = self._handles[path].get_slice(name).get_dtype()
        if dtype == "F32":
            return self._handles[path].get_tensor(name)
        if dtype == "F16":
            return self._handles[path].get_tensor(name).astype(np.float32)
        if dtype == "BF16":
            return bf16_to_f32(_raw_bf16(path, name, got))
        raise WeightError(f"{path}: tensor {name!r} has dtype {dtype}; fastdecode reads F32, F16 and BF16")


def _weight_map(index: str) -> dict:  # -> {tensor name: shard file name}
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise WeightError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {exc}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise WeightError(f"{index}: 'weight_map' must be an object of tensor name -> shard file name; "
                          f"got {str(weight_map)[:80]}")
    return weight_map


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:  # uint16 [...] -> float32 [...]
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _raw_bf16(path: str, name: str, shape: tuple) -> np.ndarray:  # -> uint16 [shape], memory-mapped
    """The raw bits of a bfloat16 tensor. The safetensors library will not
    hand bfloat16 to NumPy, so its offsets come from the file header (an
    8-byte little-endian length, then JSON with each tensor's data_offsets)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        begin, _ = json.loads(f.read(header_len))[name]["data_offsets"]
    return np.memmap(path, dtype="<u2", mode="r", offset=8 + header_len + begin, shape=shape)


# ---------------------------------------------------------------------------
# The arranged weights
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Layer:
    attn_norm: np.ndarray  # [d]
    attn_norm_bias: np.ndarray | None  # [d] (LayerNorm only)
    qkv: np.ndarray  # [(Hq + 2 Hkv) D, d]
    qkv_bias: np.ndarray | None  # [(Hq + 2 Hkv) D]
    out: np.ndarray  # [d, Hq D]
    out_bias: np.ndarray | None  # [d]
    mlp_norm: np.ndarray  # [d]
    mlp_norm_bias: np.ndarray | None  # [d]
    up: np.ndarray  # [F, d] (GPT-2) or [2F, d]: gate then up (Llama)
    up_bias: np.ndarray | None
    down: np.ndarray  # [d, F]
    down_bias: np.ndarray | None  # [d]


@dataclasses.dataclass
class Weights:
    embed: np.ndarray  # [V, d] token embeddings
    positions: np.ndarray | None  # [P, d] learned positions (GPT-2)
    layers: list
    final_norm: np.ndarray  # [d]
    final_norm_bias: np.ndarray | None  # [d]
    head: np.ndarray  # [V, d] (the embedding table itself when tied)
    notes: list = dataclasses.field(default_factory=list)  # how matrices came to their formats (quantize.py)

    def nbytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every matrix once, one embedding row each."""
        per_layer = sum(getattr(layer, f.name).nbytes for layer in self.layers for f in dataclasses.fields(layer)
                        if getattr(layer, f.name) is not None)
        row = self.embed.nbytes // self.embed.shape[0]
        rows = row * (1 if self.positions is None else 2)
        return per_layer + self.head.nbytes + self.final_norm.nbytes + rows

    def decode_order(self) -> list:
        """The matrices a decode step streams, in the order it reads them."""
        mats = [m for layer in self.layers for m in (layer.qkv, layer.out, layer.up, layer.down)] + [self.head]
        return [m if isinstance(m, np.ndarray) else m.kernel_view()[0] for m in mats]  # a QuantizedTensor: its blocks

    def summary(self) -> str:
        """Each matrix's format, shape and size, and why any is not in the format asked for."""
        from .quantize import summary

        return summary(self)


# The matrices a decode step streams live in empty_aligned memory: 64-byte
# aligned rows, and transparent huge pages where the OS has them (fewer TLB
# misses while fd.linear streams them; fastdecode.arrays says what it buys).
def _streamed(w):  # [out, in] -> the same values, C-contiguous float32 in empty_aligned memory
    out = empty_aligned(w.shape, np.float32)
    out[...] = w
    return out


def _fuse(*mats):  # several [out_i, in] -> [sum out_i, in]
    out = empty_aligned((sum(m.shape[0] for m in mats), mats[0].shape[1]), np.float32)
    np.concatenate(mats, axis=0, out=out)
    return out


def _out_in(w):  # GPT-2 Conv1D's [in, out] -> [out, in]
    return _streamed(w.T)


# buffers, not weights: old GPT-2 exports save the causal mask, old Llama ones the rotary frequencies
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def load_weights(config: ModelConfig, ckpt: Checkpoint, strict: bool = True) -> Weights:
    """The arranged weights. Raises WeightError naming a tensor that is missing, of the wrong shape or
    dtype, or (``strict``) present but unused by the architecture config.json describes."""
    weights = _gpt2(config, ckpt) if config.family == "gpt2" else _llama(config, ckpt)
    ckpt.check_all_read(strict, _BUFFERS)
    return _read_only(weights)


def _read_only(weights: Weights) -> Weights:
    """Nothing may write to the weights: that is what lets threads share a model."""
    holders = [weights, *weights.layers]
    for holder in holders:
        for f in dataclasses.fields(holder):
            value = getattr(holder, f.name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
    return weights


def _prefix(ckpt: Checkpoint, probe: str, prefixes: tuple) -> str:
    for p in prefixes:
        if p + probe in ckpt:
            return p
    raise WeightError(f"{ckpt.directory}: the checkpoint has no tensor {prefixes[0] + probe!r} "
                      f"(nor any of {', '.join(repr(p + probe) for p in prefixes[1:])})")


def _gpt2(c: ModelConfig, ckpt: Checkpoint) -> Weights:
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    p = _prefix(ckpt, "wte.weight", ("transformer.", ""))

    def get(name, *shape):
        return ckpt.get(p + name, shape)

    layers = []
    for i in range(c.num_layers):
        h = f"h.{i}."
        layers.append(Layer(  # GPT-2's Conv1D stores [in, out]
            attn_norm=get(h + "ln_1.weight", d), attn_norm_bias=get(h + "ln_1.bias", d),
            qkv=_out_in(get(h + "attn.c_attn.weight", d, 3 * d)), qkv_bias=get(h + "attn.c_attn.bias", 3 * d),
            out=_out_in(get(h + "attn.c_proj.weight", d, d)), out_bias=get(h + "attn.c_proj.bias", d),
            mlp_norm=get(h + "ln_2.weight", d), mlp_norm_bias=get(h + "ln_2.bias", d),
            up=_out_in(get(h + "mlp.c_fc.weight", d, f)), up_bias=get(h + "mlp.c_fc.bias", f),
            down=_out_in(get(h + "mlp.c_proj.weight", f, d)), down_bias=get(h + "mlp.c_proj.bias", d),
        ))
    embed = _streamed(get("wte.weight", v, d))
    head = _streamed(ckpt.get("lm_head.weight", (v, d))) if "lm_head.weight" in ckpt else embed
    return Weights(embed=embed, positions=get("wpe.weight", c.max_positions, d), layers=layers,
                   final_norm=get("ln_f.weight", d), final_norm_bias=get("ln_f.bias", d), head=head)


def _llama(c: ModelConfig, ckpt: Checkpoint) -> Weights:
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    hq, hkv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    p = _prefix(ckpt, "embed_tokens.weight", ("model.", ""))

    def get(name, *shape):
        return ckpt.get(p + name, shape)

    def bias(name, n, present):
        return get(name, n) if present else None

    layers = []
    for i in range(c.num_layers):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        qkv_bias = None
        if c.qkv_bias:
            qkv_bias = np.concatenate([get(a + "q_proj.bias", hq), get(a + "k_proj.bias", hkv),
                                       get(a + "v_proj.bias", hkv)])
        up_bias = np.concatenate([get(m + "gate_proj.bias", f), get(m + "up_proj.bias", f)]) if c.mlp_bias else None
        layers.append(Layer(
            attn_norm=get(f"layers.{i}.input_layernorm.weight", d), attn_norm_bias=None,
            qkv=_fuse(get(a + "q_proj.weight", hq, d), get(a + "k_proj.weight", hkv, d),
                      get(a + "v_proj.weight", hkv, d)),
            qkv_bias=qkv_bias,
            out=_streamed(get(a + "o_proj.weight", d, hq)), out_bias=bias(a + "o_proj.bias", d, c.out_bias),
            mlp_norm=get(f"layers.{i}.post_attention_layernorm.weight", d), mlp_norm_bias=None,
            up=_fuse(get(m + "gate_proj.weight", f, d), get(m + "up_proj.weight", f, d)), up_bias=up_bias,
            down=_streamed(get(m + "down_proj.weight", d, f)), down_bias=bias(m + "down_proj.bias", d, c.mlp_bias),
        ))
    embed = _streamed(get("embed_tokens.weight", v, d))
    if "lm_head.weight" in ckpt:
        head = _streamed(ckpt.get("lm_head.weight", (v, d)))
    elif c.tie_embeddings:
        head = embed
    else:
        raise WeightError(f"{ckpt.directory}: the checkpoint has no tensor 'lm_head.weight' and config.json "
                          "does not tie it to the embeddings (tie_word_embeddings is false)")
    return Weights(embed=embed, positions=None, layers=layers, final_norm=get("norm.weight", d),
                   final_norm_bias=None, head=head)
