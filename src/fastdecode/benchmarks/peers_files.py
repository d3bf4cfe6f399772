"""The files each peer reads, made once per checkpoint and cached.

- ``stage(hf_dir)``: the checkpoint's files (linked) plus a tokenizer of
  the checkpoint's vocabulary size. The bench checkpoints have random
  weights and no tokenizer; every converter below wants one (GGUF stores
  the vocabulary; CTranslate2 writes vocabulary.json; onnxruntime-genai's
  builder copies it). The benchmark feeds token ids, so the tokenizer only
  has to have the right size: a byte-level BPE whose tokens are the 256
  byte symbols, then pair merges of them, in order.
- GGUF: fastdecode's own writer (``Model.save(path, weights=fmt)``, the
  code behind ``fastdecode convert``), run in this process.
- CTranslate2: its converter (``TransformersConverter``), in the engine's
  interpreter.
- onnxruntime-genai: its model builder (``onnxruntime_genai.models.builder
  -p int4|int8 -e cpu``), in the engine's interpreter.

Each file or directory is written aside and renamed into place, so an
interrupted build never looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _source_key(hf_dir: str) -> str:
    """Changes when the checkpoint's files change (name, size, mtime)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(hf_dir)):
        st = os.stat(os.path.join(hf_dir, name))
        h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _publish(build, out: str) -> str:
    """build(partial_path) then rename to `out` (skipped when `out` exists)."""
    if os.path.exists(out):
        return out
    partial = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    os.replace(partial, out)
    return out


def synthetic_tokenizer(directory: str, vocab_size: int, bos_id: int | None, eos_id: int | None) -> None:
    """tokenizer.json + tokenizer_config.json: a byte-level BPE of exactly `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, merges = {}, []
    for c in alphabet[:vocab_size]:
        vocab[c] = len(vocab)
    for a in alphabet:  # pair merges "a b" -> "ab": each a new token, in order
        for b in alphabet:
            if len(vocab) >= vocab_size:
                break
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(os.path.join(directory, "tokenizer.json"))
    names = list(vocab)
    # CTranslate2 writes bos, eos and unk into its config and refuses a missing one
    special = {k: names[i if isinstance(i, int) and 0 <= i < vocab_size else 0]
               for k, i in (("bos_token", bos_id), ("eos_token", eos_id), ("unk_token", eos_id))}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20, **special}, f)


def stage(hf_dir: str, cache_dir: str) -> str:
    """A directory with the checkpoint's files (symlinks) and a tokenizer of its vocabulary size."""
    hf_dir = os.path.abspath(hf_dir)
    out = os.path.join(cache_dir, "hf")

    def build(path):
        os.makedirs(path)
        for name in os.listdir(hf_dir):
            if name not in TOKENIZER_FILES and not name.startswith(("special_tokens", "vocab", "merges")):
                os.symlink(os.path.join(hf_dir, name), os.path.join(path, name))
        with open(os.path.join(hf_dir, "config.json")) as f:
            config = json.load(f)
        synthetic_tokenizer(path, config["vocab_size"], config.get("bos_token_id"), config.get("eos_token_id"))
    return _publish(build, out)


def cache_for(hf_dir: str, root: str, name: str) -> str:
    """The cache directory of one checkpoint's peer files (a new one when the checkpoint changes)."""
    path = os.path.join(root, "peers", f"{name}-{_source_key(hf_dir)}")
    os.makedirs(path, exist_ok=True)
    return path


def gguf(staged: str, fmt: str, cache_dir: str) -> str:
    """`fmt` in f32 f16 bf16 q8_0 q4_0 q4_k_m: a GGUF written by fastdecode's own writer."""
    import fastdecode

    out = os.path.join(cache_dir, f"model-{fmt}.gguf")
    if not os.path.exists(out):
        fastdecode.load(staged).save(out, weights=fmt)  # writes aside and renames itself
    return out


def _run(cmd: list, what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")


def ctranslate2(staged: str, quantization: str, cache_dir: str, python: str) -> str:
    """`quantization` in float32 int8: CTranslate2's own TransformersConverter."""
    code = ("import sys, ctranslate2; ctranslate2.converters.TransformersConverter(sys.argv[1])"
            ".convert(sys.argv[2], quantization=sys.argv[3], force=True)")
    return _publish(lambda path: _run([python, "-c", code, staged, path, quantization],
                                      "CTranslate2's converter"),
                    os.path.join(cache_dir, f"ct2-{quantization}"))


def onnxruntime_genai(staged: str, precision: str, cache_dir: str, python: str) -> str:
    """`precision` in int4 int8: onnxruntime-genai's model builder for the CPU."""
    def build(path):
        _run([python, "-m", "onnxruntime_genai.models.builder", "-i", staged, "-o", path, "-p", precision,
              "-e", "cpu", "-c", os.path.join(cache_dir, "ort-builder-cache")], "onnxruntime-genai's model builder")
    return _publish(build, os.path.join(cache_dir, f"ort-{precision}"))
