"""What a checkpoint's config.json says, in the few fields the forward pass needs.

Two families: ``"gpt2"`` (GPT2LMHeadModel: LayerNorm, learned positions,
gelu, biases everywhere) and ``"llama"`` (LlamaForCausalLM and its close
relatives Qwen2ForCausalLM and MistralForCausalLM: RMSNorm, RoPE, SwiGLU,
grouped-query attention). Both transformers 4.x (``rope_theta`` +
``rope_scaling``) and 5.x (``rope_parameters``) spellings are read.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

# architecture name in config.json -> family
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "MistralForCausalLM": "llama",
}
_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "mistral": "MistralForCausalLM"}
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu")
ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """config.json describes something fastdecode cannot run (the message says what)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str  # as in config.json, e.g. "LlamaForCausalLM"
    family: str  # "gpt2" | "llama"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int  # the longest sequence (prompt + new tokens) the model may see
    norm_eps: float
    activation: str
    tie_embeddings: bool
    qkv_bias: bool  # GPT-2, Qwen2, Llama with attention_bias
    out_bias: bool  # the attention output projection (GPT-2, Llama attention_bias)
    mlp_bias: bool
    attn_scale: float  # multiplies q.k (GPT-2 may also divide by the layer index: see layer_attn_scale)
    scale_by_inverse_layer: bool = False
    rope_theta: float = 10000.0
    rope: dict | None = None  # rope scaling: {"rope_type": "llama3"|"linear", ...}
    bos_token_id: int | None = None
    eos_token_ids: tuple = ()

    @property
    def qkv_size(self) -> int:  # columns of the fused QKV projection
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def layer_attn_scale(self, layer: int) -> float:
        return self.attn_scale / (layer + 1) if self.scale_by_inverse_layer else self.attn_scale

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json (a checkpoint directory needs one)") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must hold a JSON object; got a {type(raw).__name__}")
        archs = raw.get("architectures") or [_MODEL_TYPES.get(raw.get("model_type"), raw.get("model_type"))]
        arch = next((a for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            raise ConfigError(f"unsupported architecture {archs}; fastdecode runs {', '.join(ARCHITECTURES)}")
        family = ARCHITECTURES[arch]
        try:
            fields = _gpt2(raw) if family == "gpt2" else _llama(raw, arch)
        except KeyError as exc:
            raise ConfigError(f"{arch} config lacks the field {exc}") from None
        eos = raw.get("eos_token_id")
        eos = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        config = cls(architecture=arch, family=family, bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos,
                     **fields)
        config._check()
        return config

    def _check(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_kv_heads})")
        if self.family == "llama" and self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings; got {self.head_dim}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unsupported activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")


def _positive(raw: dict, *keys) -> tuple:
    """The fields as ints, each checked positive before any arithmetic uses it."""
    values = []
    for key in keys:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer; got {value!r}")
        values.append(value)
    return tuple(values)


def _gpt2(raw: dict) -> dict:
    d, heads = _positive(raw, "n_embd", "n_head")
    if d % heads:
        raise ConfigError(f"n_embd ({d}) must be a multiple of n_head ({heads})")
    head_dim = d // heads
    return dict(
        vocab_size=raw["vocab_size"], hidden_size=d, num_layers=raw["n_layer"], num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, intermediate_size=raw.get("n_inner") or 4 * d,
        max_positions=raw["n_positions"], norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        activation=raw.get("activation_function", "gelu_new"), tie_embeddings=True,
        qkv_bias=True, out_bias=True, mlp_bias=True,
        attn_scale=1.0 / math.sqrt(head_dim) if raw.get("scale_attn_weights", True) else 1.0,
        scale_by_inverse_layer=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
    )


def _llama(raw: dict, arch: str) -> dict:
    d, heads = _positive(raw, "hidden_size", "num_attention_heads")
    head_dim = raw.get("head_dim") or d // heads
    rope = dict(raw.get("rope_parameters") or {})  # transformers 5.x
    legacy = raw.get("rope_scaling")  # transformers 4.x
    if legacy:
        rope.update(legacy)
    theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"unsupported rope scaling {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "llama3":
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if key not in rope:
                raise ConfigError(f"llama3 rope scaling lacks {key!r}")
    if rope_type == "linear" and "factor" not in rope:
        raise ConfigError("linear rope scaling lacks 'factor'")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor other than 1 is not supported")
    max_positions = raw["max_position_embeddings"]
    # a sliding window changes the answer once the sequence outgrows it: cap the context there instead
    window = raw.get("sliding_window")
    if window and (arch == "MistralForCausalLM" or raw.get("use_sliding_window")):
        max_positions = min(max_positions, int(window))
    attention_bias = bool(raw.get("attention_bias", False))
    return dict(
        vocab_size=raw["vocab_size"], hidden_size=d, num_layers=raw["num_hidden_layers"], num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads, head_dim=head_dim,
        intermediate_size=raw["intermediate_size"], max_positions=max_positions,
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)), activation=raw.get("hidden_act", "silu"),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=attention_bias or arch == "Qwen2ForCausalLM", out_bias=attention_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)), attn_scale=1.0 / math.sqrt(head_dim),
        rope_theta=theta, rope=None if rope_type == "default" else {"rope_type": rope_type, **rope},
    )


def rope_frequencies(config: ModelConfig) -> np.ndarray:  # -> [head_dim // 2] float64
    """Rotation speed of each pair of channels, with Llama-3 or linear scaling."""
    d = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    rope = config.rope or {}
    if rope.get("rope_type") == "freq_factors":  # GGUF's rope_freqs.weight: one divisor per pair (Llama 3)
        return inv_freq / np.asarray(rope["factors"], np.float64)
    if rope.get("rope_type") == "linear":
        return inv_freq / float(rope["factor"])
    if rope.get("rope_type") == "llama3":
        factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_len = float(rope["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        medium = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return np.where(wavelen > old_len / low, inv_freq / factor,
                        np.where(wavelen < old_len / high, inv_freq, medium))
    return inv_freq


def read_json(path: str) -> dict:
    """A JSON object file as a dict; {} when the file is absent."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object; got {type(data).__name__}")
    return data
