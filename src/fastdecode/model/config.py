"""What a checkpoint's config.json says, in the few fields the forward pass needs.

Two families: ``"gpt2"`` (GPT2LMHeadModel: LayerNorm, learned positions,
gelu, biases everywhere) and ``"llama"`` (LlamaForCausalLM and its close
relatives Qwen2ForCausalLM and MistralForCausalLM: RMSNorm, RoPE, SwiGLU,
grouped-query attention). Both transformers 4.x (``rope_theta`` +
``rope_scaling``) and 5.x (``rope_parameters``) spellings are read. A field
missing from config.json takes transformers' default for the architecture
(``DEFAULTS``); every field is checked as it is read, and an error names it.
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
# What a field missing from config.json means: the defaults of transformers'
# configuration classes (GPT2Config, LlamaConfig, Qwen2Config, MistralConfig,
# the same from transformers 4.40 to 5.x). None: derived (a Llama/Mistral
# head_dim is hidden_size // num_attention_heads, num_key_value_heads is
# num_attention_heads; GPT-2's n_inner is 4 n_embd). tests/test_user_reports.py
# holds each against transformers.AutoConfig.
_LLAMA_LIKE = dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=None, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                   tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, mlp_bias=False,
                   sliding_window=None, use_sliding_window=False, bos_token_id=1, eos_token_id=2)
DEFAULTS = {
    "GPT2LMHeadModel": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                            activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                            scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True,
                            bos_token_id=50256, eos_token_id=50256),
    "LlamaForCausalLM": dict(_LLAMA_LIKE, intermediate_size=11008, max_position_embeddings=2048),
    "Qwen2ForCausalLM": dict(_LLAMA_LIKE, vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                             num_key_value_heads=32, sliding_window=4096,  # the window only with use_sliding_window
                             bos_token_id=None, eos_token_id=None),
    "MistralForCausalLM": dict(_LLAMA_LIKE, intermediate_size=14336, max_position_embeddings=131072,
                               num_key_value_heads=8, sliding_window=4096),
}
# GPT2Config.attribute_map: the common names a GPT-2 config.json may use instead
_ALIASES = {"GPT2LMHeadModel": {"n_embd": "hidden_size", "n_positions": "max_position_embeddings",
                                "n_head": "num_attention_heads", "n_layer": "num_hidden_layers"}}
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
    sliding_window: int | None = None  # attention window (Mistral); max_positions stops there
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
        except ConfigError as exc:  # the file and the field
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        """Raises ConfigError naming the field for a value of the wrong type or out of range."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must hold a JSON object; got a {type(raw).__name__}")
        archs = raw.get("architectures") or [_MODEL_TYPES.get(raw.get("model_type"), raw.get("model_type"))]
        if not isinstance(archs, list):
            raise ConfigError(f"architectures must be a list of names; got {archs!r}")
        arch = next((a for a in archs if isinstance(a, str) and a in ARCHITECTURES), None)
        if arch is None:
            raise ConfigError(f"unsupported architecture {archs}; fastdecode runs {', '.join(ARCHITECTURES)}")
        family = ARCHITECTURES[arch]
        get = _Fields(raw, DEFAULTS[arch], _ALIASES.get(arch, {}))
        fields = _gpt2(get) if family == "gpt2" else _llama(get, arch)
        config = cls(architecture=arch, family=family, bos_token_id=get("bos_token_id", "id"),
                     eos_token_ids=get("eos_token_id", "ids"), **fields)
        config._check()
        return config

    def _check(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (isinstance(value, float) and 0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive finite number; got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads ({self.num_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_kv_heads})")
        if self.family == "llama" and self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings; got {self.head_dim}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unsupported activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")


class _Fields:
    """config.json's fields by name, with the architecture's defaults, each checked as it is read."""

    def __init__(self, raw: dict, defaults: dict, aliases: dict):
        self.raw, self.defaults, self.aliases = raw, defaults, aliases

    def __call__(self, key: str, kind: str):
        name = self.aliases[key] if key not in self.raw and self.aliases.get(key) in self.raw else key
        return check_field(name, self.raw[name] if name in self.raw else self.defaults[key], kind)


def check_field(key: str, value, kind: str):
    """value as `kind`: "count" (int >= 1), "positive" (finite float > 0), "flag" (bool), "name" (str),
    "id" (None or int >= 0), "ids" (None, an int or a list of ints >= 0, as a tuple), "count?" / "name?"
    (None or the kind)."""
    if kind.endswith("?"):
        return None if value is None else check_field(key, value, kind[:-1])
    integer = isinstance(value, int) and not isinstance(value, bool)
    if kind == "count" and integer and value >= 1:
        return value
    if kind == "positive" and (integer or isinstance(value, float)) and 0 < value < math.inf:
        return float(value)
    if kind == "flag" and isinstance(value, bool):
        return value
    if kind == "name" and isinstance(value, str):
        return value
    if kind == "id" and (value is None or (integer and value >= 0)):
        return value
    if kind == "ids":
        ids = [] if value is None else value if isinstance(value, list) else [value]
        if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            return tuple(ids)
    rule = {"count": "a positive integer", "positive": "a positive finite number", "flag": "true or false",
            "name": "a string", "id": "a token id (an integer >= 0) or null",
            "ids": "a token id or a list of token ids (integers >= 0)"}[kind]
    raise ConfigError(f"{key} must be {rule}; got {value!r}")


def _gpt2(get: _Fields) -> dict:
    d, heads = get("n_embd", "count"), get("n_head", "count")
    if d % heads:
        raise ConfigError(f"n_embd ({d}) must be a multiple of n_head ({heads})")
    head_dim = d // heads
    return dict(
        vocab_size=get("vocab_size", "count"), hidden_size=d, num_layers=get("n_layer", "count"), num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim, intermediate_size=get("n_inner", "count?") or 4 * d,
        max_positions=get("n_positions", "count"), norm_eps=get("layer_norm_epsilon", "positive"),
        activation=get("activation_function", "name"), tie_embeddings=True,
        qkv_bias=True, out_bias=True, mlp_bias=True,
        attn_scale=1.0 / math.sqrt(head_dim) if get("scale_attn_weights", "flag") else 1.0,
        scale_by_inverse_layer=get("scale_attn_by_inverse_layer_idx", "flag"),
    )


def _llama(get: _Fields, arch: str) -> dict:
    d, heads = get("hidden_size", "count"), get("num_attention_heads", "count")
    head_dim = get("head_dim", "count?") or d // heads
    raw = get.raw
    rope = raw.get("rope_parameters") or {}  # transformers 5.x
    legacy = raw.get("rope_scaling")  # transformers 4.x
    for key, value in (("rope_parameters", rope), ("rope_scaling", legacy or {})):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a JSON object; got {value!r}")
    rope = dict(rope, **(legacy or {}))
    theta = check_field("rope_theta", rope.pop("rope_theta"), "positive") if "rope_theta" in rope \
        else get("rope_theta", "positive")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"unsupported rope scaling {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    needs = {"linear": ("factor",), "default": (),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    for key in needs[rope_type]:
        if key not in rope:
            raise ConfigError(f"{rope_type} rope scaling lacks {key!r}")
        check_field(f"rope scaling's {key}", rope[key], "count" if key.startswith("original") else "positive")
    if rope_type == "llama3" and rope["high_freq_factor"] <= rope["low_freq_factor"]:
        raise ConfigError(f"llama3 rope scaling's high_freq_factor ({rope['high_freq_factor']}) must exceed "
                          f"low_freq_factor ({rope['low_freq_factor']})")
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor other than 1 is not supported")
    max_positions = get("max_position_embeddings", "count")
    # a sliding window changes the answer once the sequence outgrows it: cap the context there instead
    window = get("sliding_window", "count?")
    if arch != "MistralForCausalLM" and not get("use_sliding_window", "flag"):
        window = None  # Qwen2 (and Llama) attend to everything unless use_sliding_window
    attention_bias = get("attention_bias", "flag")
    return dict(
        vocab_size=get("vocab_size", "count"), hidden_size=d, num_layers=get("num_hidden_layers", "count"),
        num_heads=heads, num_kv_heads=get("num_key_value_heads", "count?") or heads, head_dim=head_dim,
        intermediate_size=get("intermediate_size", "count"),
        max_positions=max_positions if window is None else min(max_positions, window), sliding_window=window,
        norm_eps=get("rms_norm_eps", "positive"), activation=get("hidden_act", "name"),
        tie_embeddings=get("tie_word_embeddings", "flag"),
        qkv_bias=attention_bias or arch == "Qwen2ForCausalLM", out_bias=attention_bias,
        mlp_bias=get("mlp_bias", "flag"), attn_scale=1.0 / math.sqrt(head_dim),
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
