"""Small GGUF files for the GGUF tests: the tiny checkpoints of
model_checkpoints.py written by fastdecode, checkpoints with other
tokenizers (SentencePiece-style, Llama 3 and Qwen2 byte-level regexes),
and byte-level surgery on a file's tensor records."""
from __future__ import annotations

import functools
import json
import os
import shutil
import struct

import numpy as np

import fastdecode
import model_checkpoints as mc
from model_checkpoints import SENTENCES

TEXTS = SENTENCES + [
    "", " ", "  leading and trailing  ", "\n\n\ttabs\tand\nnewlines\r\n", "numbers 1234567 and 3.14159",
    "UPPER lower MiXeD can't won't I'M", "emoji 🦙🙂👍🏽 and CJK 東京都 한국어", "a<|endoftext|>b <|endoftext|> end",
    "Äpfel über Öl — “quotes” … ½ €", "    def f(x):\n        return x ** 2\n",
]
SPM_SPECIALS = ["<unk>", "<s>", "</s>"]


@functools.cache
def gguf_of(kind: str, weights: str = "f32", **overrides) -> str:
    """A GGUF written by fastdecode from the tiny `kind` checkpoint."""
    directory = mc.checkpoint(kind) if not overrides else wide_checkpoint(kind, **overrides)
    path = os.path.join(mc._ROOT, f"{os.path.basename(directory)}-{weights}.gguf")
    fastdecode.load(directory).save(path, weights=weights)
    return path


@functools.cache
def wide_checkpoint(kind: str, **overrides) -> str:
    """The directory of a checkpoint whose rows fit the 256-weight K-quant blocks."""
    directory = os.path.join(mc._ROOT, kind + "-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items())))
    return mc.build(kind, directory, **overrides)


# ---------------------------------------------------------------------------
# Tokenizers of the other kinds, and checkpoints that carry them
# ---------------------------------------------------------------------------

def spm_tokenizer(path: str) -> None:
    """A Llama-2-style tokenizer.json: BPE with <0xNN> byte fallback over
    text whose spaces are U+2581, a space prefixed, <s> added in front."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")  # training only: merges within words
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=300 + 256, special_tokens=SPM_SPECIALS + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(SENTENCES * 3, trainer)
    tok.pre_tokenizer = None  # as Llama 2's tokenizer.json: no split, as SentencePiece
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPM_SPECIALS])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:  # the trainer marks the byte tokens special: they are plain vocabulary
        added["special"] = added["content"] in SPM_SPECIALS
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["special"]]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)


def regex_tokenizer(path: str, pattern: str, ignore_merges: bool) -> None:
    """A byte-level BPE whose text is split first by `pattern` (Llama 3's or Qwen2's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[mc.EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer)
    tok.save(path)


@functools.cache
def checkpoint_with_tokenizer(name: str) -> str:
    """A tiny Llama checkpoint directory (model_checkpoints' llama-gqa-tied
    weights, NumPy-written) with tokenizer `name`: spm, llama-bpe or qwen2."""
    from tokenizers import Tokenizer

    from fastdecode.model import gguf_tokenizer as gt

    file = os.path.join(mc._ROOT, f"tokenizer-{name}.json")
    if name == "spm":
        spm_tokenizer(file)
        bos, eos = 1, 2
        extra = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"}
    else:
        regex_tokenizer(file, gt.LLAMA3_SPLIT if name == "llama-bpe" else gt.QWEN2_SPLIT, name == "llama-bpe")
        bos = eos = 0
        extra = {"bos_token": mc.EOS, "eos_token": mc.EOS}
    vocab = Tokenizer.from_file(file).get_vocab_size()
    directory = mc.build("llama-gqa-tied", os.path.join(mc._ROOT, "tok-" + name), vocab_size=vocab,
                         bos_token_id=bos, eos_token_id=eos)
    shutil.copy(file, os.path.join(directory, "tokenizer.json"))  # over build's byte-level BPE
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": eos}, f)
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(extra, f)
    return directory


# ---------------------------------------------------------------------------
# Byte surgery on a GGUF's tensor records
# ---------------------------------------------------------------------------

def tensor_record(data: bytes, name: str) -> dict:
    """Byte offsets of one tensor record's fields: u64 name length, name,
    u32 n_dims, u64 dims[n_dims], u32 type, u64 offset (GGUF v3)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    start = data.index(key)
    at = start + len(key)
    (n_dims,) = struct.unpack_from("<I", data, at)
    dims = at + 4
    type_at = dims + 8 * n_dims
    return {"n_dims": at, "dims": dims, "count": n_dims, "type": type_at, "offset": type_at + 4}


def patched(src: str, dst: str, edit) -> str:
    """A copy of GGUF `src` at `dst` after `edit(bytearray)`."""
    with open(src, "rb") as f:
        data = bytearray(f.read())
    edit(data)
    with open(dst, "wb") as f:
        f.write(data)
    return dst


def write_gguf(path: str, arch: str, keys: dict, tensors: dict, raw_types: dict | None = None) -> str:
    """A GGUF from scratch: `keys` {name: value} (ints as uint32), `tensors` {name: array}."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    for k, v in keys.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v)
    for name, t in tensors.items():
        w.add_tensor(name, t, raw_dtype=(raw_types or {}).get(name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rewrite(src: str, dst: str, drop_keys=(), set_keys=None, retype=None) -> str:
    """Copy GGUF `src` to `dst` without `drop_keys`, with `set_keys` {key: value}
    replaced, and tensors in `retype` {name: gguf type} re-encoded with gguf.quants."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    set_keys = dict(set_keys or {})
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in drop_keys or key == "general.architecture":
            continue
        value = set_keys.pop(key, field.contents())
        w.add_key_value(key, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    for key, value in set_keys.items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
    for t in reader.tensors:
        qtype = (retype or {}).get(t.name)
        if qtype is None:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        else:
            f = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
            w.add_tensor(t.name, gguf.quants.quantize(f, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
