"""Tiny random Hugging Face checkpoints for the model tests, written with
NumPy, `safetensors` and `tokenizers` alone (no torch), once per test
process: config.json as transformers writes it for the architecture,
model.safetensors with transformers' tensor names and layouts, and a
byte-level BPE tokenizer trained here (so multi-byte UTF-8 characters split
over tokens).

`checkpoint(kind)` returns the directory. Tests that compare with
transformers load the same directory with `hf_model(directory)`, which skips
only that test when torch or transformers is missing.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Déjà vu: naïve café, piñata, 東京 and 🙂 emoji.",
    "Hello world! Hello fastdecode, hello decoding.",
    "def main():\n    return 42  # the answer\n",
]
EOS = "<|endoftext|>"
_ROOT = tempfile.mkdtemp(prefix="fastdecode-models-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)
_LLAMA = dict(hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False)
KINDS = {
    # name: (architecture, model_type, config fields)
    "gpt2": ("GPT2LMHeadModel", "gpt2",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=None, activation_function="gelu_new",
                  layer_norm_epsilon=1e-5, tie_word_embeddings=True, scale_attn_weights=True,
                  scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)),
    "llama-gqa-tied": ("LlamaForCausalLM", "llama",
                       dict(SMALL, **_LLAMA, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0)),
    "llama3-untied": ("LlamaForCausalLM", "llama",
                      dict(SMALL, **_LLAMA, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2ForCausalLM", "qwen2",
              dict(SMALL, hidden_act="silu", rms_norm_eps=1e-6, num_key_value_heads=2, tie_word_embeddings=False,
                   rope_theta=1000000.0, use_sliding_window=False, sliding_window=None, max_window_layers=28)),
    "mistral": ("MistralForCausalLM", "mistral",
                dict(SMALL, hidden_act="silu", rms_norm_eps=1e-6, num_key_value_heads=2, tie_word_embeddings=False,
                     rope_theta=10000.0, sliding_window=None)),
}


@functools.cache
def tokenizer_file() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer)
    path = os.path.join(_ROOT, "tokenizer.json")
    tok.save(path)
    return path


def vocab_size() -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(tokenizer_file()).get_vocab_size()


# ---------------------------------------------------------------------------
# Tensors: transformers' names and layouts ([out, in], GPT-2's Conv1D [in, out])
# ---------------------------------------------------------------------------

def tensor_shapes(kind: str, c: dict) -> dict:  # name -> shape
    v = c["vocab_size"]
    if KINDS[kind][1] == "gpt2":
        d, inner = c["n_embd"], c["n_inner"] or 4 * c["n_embd"]
        shapes = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (c["n_positions"], d),
                  "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
        for i in range(c["n_layer"]):
            p = f"transformer.h.{i}."
            shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                           p + "ln_2.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                           p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                           p + "attn.c_proj.bias": (d,), p + "mlp.c_fc.weight": (d, inner),
                           p + "mlp.c_fc.bias": (inner,), p + "mlp.c_proj.weight": (inner, d),
                           p + "mlp.c_proj.bias": (d,)})
        return shapes
    d, n_i, h = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    hd = c.get("head_dim") or d // h
    kv = c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, h * hd),
                       p + "mlp.gate_proj.weight": (n_i, d), p + "mlp.up_proj.weight": (n_i, d),
                       p + "mlp.down_proj.weight": (d, n_i)})
        if kind == "qwen2":
            shapes.update({p + "self_attn.q_proj.bias": (h * hd,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


def random_tensors(kind: str, config: dict, seed: int) -> dict:
    """Weights spread wide enough that logits differ clearly (no near-ties for
    greedy), norms' scales around 1, biases nonzero."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(tensor_shapes(kind, config).items()):
        noise = rng.standard_normal(shape).astype(np.float32)
        if "norm" in name or "ln_" in name:
            tensors[name] = 1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        else:
            tensors[name] = 0.15 * noise
    return tensors


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:  # float32 -> uint16, round to nearest even (finite inputs)
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def save_safetensors(tensors: dict, path: str, dtype: str = "float32") -> dict:
    """Write `tensors` (float32) as `dtype` (float32, float16, bfloat16); return
    them as stored, in float32. Written by hand, as the format's spec says,
    because NumPy has no bfloat16 for safetensors.numpy to take."""
    code = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    header, blobs, stored, offset = {"__metadata__": {"format": "pt"}}, [], {}, 0
    for name, t in tensors.items():
        if dtype == "bfloat16":
            raw = to_bfloat16_bits(t)
            stored[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        else:
            raw = t.astype(dtype)
            stored[name] = raw.astype(np.float32)
        blob = raw.tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return stored


def build(kind: str, directory: str, dtype: str | None = None, **overrides) -> str:
    """Save a tiny random `kind` model (+ tokenizer) to `directory` with its
    weights stored as `dtype` (float32 by default); return the directory."""
    architecture, model_type, fields = KINDS[kind]
    eos = 0  # the trainer puts the special token first
    config = {"architectures": [architecture], "model_type": model_type, "vocab_size": vocab_size(),
              "bos_token_id": eos, "eos_token_id": eos, **fields, **overrides, "dtype": dtype or "float32"}
    os.makedirs(directory, exist_ok=True)
    save_safetensors(random_tensors(kind, config, seed=sum(map(ord, kind))),
                     os.path.join(directory, "model.safetensors"), dtype or "float32")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eos, "eos_token_id": eos}, f)
    shutil.copy(tokenizer_file(), os.path.join(directory, "tokenizer.json"))
    return directory


@functools.cache
def checkpoint(kind: str, dtype: str | None = None) -> str:
    return build(kind, os.path.join(_ROOT, kind + ("" if dtype is None else "-" + dtype)), dtype)


# ---------------------------------------------------------------------------
# transformers, for the tests that compare with it
# ---------------------------------------------------------------------------

def torch_and_transformers():
    """(torch, transformers), or skip the calling test naming what is missing."""
    torch = pytest.importorskip("torch", reason="this test compares with transformers (PyTorch)")
    transformers = pytest.importorskip("transformers", reason="this test compares with transformers")
    return torch, transformers


@functools.cache
def _hf_model(directory: str):
    torch, transformers = torch_and_transformers()
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                                    output_loading_info=True)
    unread = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not unread, f"the checkpoint in {directory} does not match transformers' layout: {unread}"
    return model.eval()


def hf_model(directory) -> object:
    """The transformers model of a checkpoint directory, in float32 (a
    float16/bfloat16 file gives float32 holding the rounded weights)."""
    return _hf_model(str(directory))


def hf_logits(model, ids) -> np.ndarray:  # ids: [T] -> [T, V] float32
    torch, _ = torch_and_transformers()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def prompt_ids(n: int, seed: int = 0) -> list:
    return [int(i) for i in np.random.default_rng(seed).integers(1, vocab_size() - 1, n)]
