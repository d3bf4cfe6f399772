"""Tiny random Hugging Face checkpoints for the model tests, built once per
test process with `transformers` and saved with `save_pretrained`, each with
a byte-level BPE tokenizer trained here by `tokenizers` (so multi-byte UTF-8
characters split over tokens).

`checkpoint(kind)` returns (directory, the transformers model in float32).
"""
from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model tests compare with transformers (PyTorch)")
transformers = pytest.importorskip("transformers", reason="the model tests compare with transformers")

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
KINDS = {
    # name: (transformers config class, model class, config kwargs)
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "llama-gqa-tied": ("LlamaConfig", "LlamaForCausalLM",
                       dict(SMALL, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0)),
    "llama3-untied": ("LlamaConfig", "LlamaForCausalLM",
                      dict(SMALL, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(SMALL, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1000000.0)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(SMALL, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None)),
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


def randomize(model, seed: int):
    """Weights spread wide enough that logits differ clearly (no near-ties for
    greedy), norms' scales around 1, biases nonzero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "ln_" in name:
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def build(kind: str, directory: str, dtype=None, **overrides):
    """Save a tiny random `kind` model (+ tokenizer) to `directory`; return the float32 torch model."""
    config_cls, model_cls, kwargs = KINDS[kind]
    eos = 0  # the trainer puts the special token first
    config = getattr(transformers, config_cls)(vocab_size=vocab_size(), bos_token_id=eos, eos_token_id=eos,
                                               **{**kwargs, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    randomize(model, seed=sum(map(ord, kind)))
    if dtype is None:
        model.save_pretrained(directory)
    else:  # stored as dtype; the reference stays float32 (its rotary buffers too) with the rounded weights
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).to(torch.float32))
        copy.deepcopy(model).to(dtype).save_pretrained(directory)
    shutil.copy(tokenizer_file(), os.path.join(directory, "tokenizer.json"))
    return model


@functools.cache
def checkpoint(kind: str, dtype: str | None = None) -> tuple:
    directory = os.path.join(_ROOT, kind + ("" if dtype is None else "-" + dtype))
    return directory, build(kind, directory, None if dtype is None else getattr(torch, dtype))


def hf_logits(model, ids) -> np.ndarray:  # ids: [T] -> [T, V] float32
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def prompt_ids(n: int, seed: int = 0) -> list:
    return [int(i) for i in np.random.default_rng(seed).integers(1, vocab_size() - 1, n)]
