"""A GGUF file's tokenizer as a ``tokenizers.Tokenizer``, and back.

GGUF stores no tokenizer.json: ``tokenizer.ggml.*`` keys hold the vocabulary
(``tokens``, ``token_type``, ``scores``, ``merges``) and the rules, under
llama.cpp's names. This module rebuilds the tokenizer llama.cpp runs
(``src/llama-vocab.cpp``) from the ``tokenizers`` library's parts:

- ``tokenizer.ggml.model = "gpt2"``: byte-level BPE with the file's merges,
  text split first by the regular expressions llama.cpp picks for
  ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`; an unknown name is a
  ValueError naming it, as llama.cpp refuses it too). ``llama-bpe`` also
  takes a whole word found in the vocabulary before any merge
  (``ignore_merges``).
- ``"llama"``: SentencePiece-style BPE: a space prefix (unless
  ``add_space_prefix`` is false), spaces spelt U+2581, merges ranked by the
  merged token's score (llama.cpp merges the adjacent pair whose join has
  the highest score), ``<0xNN>`` byte fallback for characters the
  vocabulary lacks.

Token types (llama.cpp's ``llama_token_type``): CONTROL tokens are special
added tokens (matched whole in the text, as llama.cpp does with
``parse_special=true``, the way chat templates use them, and skipped by
``decode(skip_special_tokens=True)``); USER_DEFINED ones are matched whole,
never split. bos/eos are added as ``add_bos_token``/``add_eos_token`` say
(llama.cpp's per-model defaults when absent).

Writing goes the other way from a tokenizer.json (:func:`add_to_writer`),
with ``gguf.SpecialVocab`` for the special ids, merges, add_bos/add_eos and
the chat template, so a file fastdecode writes reads back to the same ids.
"""
from __future__ import annotations

import json

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (the expressions llama.cpp splits with, one after the other; ignore_merges; add_bos default)
PRE_TOKENIZERS = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", "[0-9][0-9][0-9]"), False, False),
    "gpt-2": ((GPT2_SPLIT,), False, False),
    "llama-bpe": ((LLAMA3_SPLIT,), True, True),
    "llama3": ((LLAMA3_SPLIT,), True, True),
    "llama-v3": ((LLAMA3_SPLIT,), True, True),
    "qwen2": ((QWEN2_SPLIT,), False, False),
    "deepseek-r1-qwen": ((QWEN2_SPLIT,), False, False),
}
# llama.cpp's llama_token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


class TokenizerMetadataError(ValueError):
    """The tokenizer.ggml.* keys are missing, malformed, or name a tokenizer fastdecode does not build."""


def _required(meta: dict, key: str):
    if key not in meta:
        raise TokenizerMetadataError(f"GGUF metadata lacks the key {key!r}")
    return meta[key]


def build(meta: dict):
    """``(tokenizers.Tokenizer, info)`` from the ``tokenizer.*`` metadata
    (a dict of key -> Python value). ``info``: bos/eos/eot/unk/pad ids,
    add_bos/add_eos, chat_template (None where absent). Raises
    TokenizerMetadataError (a ValueError) naming the key at fault."""
    try:
        return _build(meta)
    except TokenizerMetadataError:
        raise
    except Exception as exc:  # the tokenizers library raises bare Exceptions for inconsistent vocabularies
        raise TokenizerMetadataError(f"tokenizer.ggml.* do not describe a consistent tokenizer: {exc}") from None


def _build(meta: dict):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    kind = _required(meta, "tokenizer.ggml.model")
    tokens = list(_required(meta, "tokenizer.ggml.tokens"))
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerMetadataError("tokenizer.ggml.tokens must be a non-empty array of strings")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerMetadataError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    pre = meta.get("tokenizer.ggml.pre", "default") if kind == "gpt2" else None
    if kind == "gpt2":
        if pre not in PRE_TOKENIZERS:
            raise TokenizerMetadataError(f"unknown tokenizer.ggml.pre {pre!r}; fastdecode knows "
                                         f"{', '.join(sorted(PRE_TOKENIZERS))}")
        splits, ignore_merges, add_bos_default = PRE_TOKENIZERS[pre]
        merges = [_split_merge(m) for m in _required(meta, "tokenizer.ggml.merges")]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(_regex(s), behavior="isolated") for s in splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        scores = list(_required(meta, "tokenizer.ggml.scores"))
        if len(scores) != len(tokens):
            raise TokenizerMetadataError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
        add_bos_default = True
        unk_id = meta.get("tokenizer.ggml.unknown_token_id", 0)
        vocab = {t: i for i, t in enumerate(tokens)}
        mergeable = {t: s for t, s, ty in zip(tokens, scores, types) if ty in (NORMAL, USER_DEFINED)}
        tok = Tokenizer(models.BPE(vocab, merges_from_scores(vocab, mergeable), fuse_unk=True, byte_fallback=True,
                                   unk_token=tokens[unk_id] if 0 <= unk_id < len(tokens) else None))
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        # a normalizer, not Metaspace: llama.cpp prefixes a space even to text that starts with one, and
        # does so after every special token, as a normalizer (run on each piece between them) does
        tok.normalizer = normalizers.Sequence(([normalizers.Prepend(SPACE)] if prefix else [])
                                              + [normalizers.Replace(" ", SPACE)])
        steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    else:
        raise TokenizerMetadataError(f"tokenizer.ggml.model {kind!r} is not supported; fastdecode builds 'gpt2' "
                                     "(byte-level BPE) and 'llama' (SentencePiece BPE)")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                    if ty == USER_DEFINED])
    info = {name: _token_id(meta, key, len(tokens)) for name, key in
            (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"),
             ("unk", "unknown_token_id"), ("pad", "padding_token_id"))}
    info["add_bos"] = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and info["bos"] is not None
    info["add_eos"] = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and info["eos"] is not None
    info["chat_template"] = meta.get("tokenizer.chat_template")
    info["pre"] = pre
    _post_process(tok, tokens, info)
    return tok, info


def _split_merge(merge: str) -> tuple:
    """ "a b" -> ("a", "b"), split at the first space after the first character, as llama.cpp does."""
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerMetadataError(f"tokenizer.ggml.merges entry {merge!r} is not two tokens joined by a space")
    return merge[:pos], merge[pos + 1:]


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def _token_id(meta: dict, key: str, n: int):
    value = meta.get("tokenizer.ggml." + key)
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < n:
        raise TokenizerMetadataError(f"tokenizer.ggml.{key} = {value!r} is not a token id in [0, {n})")
    return value


def _post_process(tok, tokens, info):
    from tokenizers import processors

    bos, eos = (tokens[info["bos"]] if info["add_bos"] else None), (tokens[info["eos"]] if info["add_eos"] else None)
    if bos is None and eos is None:
        return
    single = ([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else [])
    special = [(t, tokens.index(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=single + ["$B:1"], special_tokens=special)


def merges_from_scores(vocab: dict, scores: dict) -> list:
    """BPE merges equivalent to SentencePiece's rule (join the adjacent pair
    whose join is a token with the highest score): every split of every
    mergeable token into two vocabulary tokens, best score first (the
    construction transformers uses for GGUF files, ``generate_merges``)."""
    merges = []
    for token, score in scores.items():
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (-m[2], len(m[0]), len(m[1])))
    return [(a, b) for a, b, _ in merges]


# ---------------------------------------------------------------------------
# Writing: tokenizer.json -> tokenizer.ggml.*
# ---------------------------------------------------------------------------

def describe(tokenizer_json: str) -> dict:
    """What a tokenizer.json is in GGUF's terms: model ("gpt2"|"llama"), pre,
    tokens, token types, scores. Raises ValueError for a tokenizer GGUF
    (and so llama.cpp) cannot express."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{tokenizer_json}: a {model.get('type')} tokenizer; fastdecode writes BPE tokenizers to GGUF")
    n = tok.get_vocab_size(with_added_tokens=True)
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(n)):
        raise ValueError(f"{tokenizer_json}: token ids are not 0..{n - 1} without gaps")
    tokens = [by_id[i] for i in range(n)]
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    types = [(CONTROL if added[i]["special"] else USER_DEFINED) if i in added else NORMAL for i in range(n)]
    if model.get("byte_fallback"):
        ranks = {a + b: r for r, (a, b) in enumerate(_merge_pairs(model.get("merges", [])))}
        scores = [-float(ranks.get(t, len(ranks))) for t in tokens]
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
            elif t == model.get("unk_token"):
                types[i] = UNKNOWN
        prefix = _metaspace_prefix(spec, tokenizer_json)
        return dict(model="llama", pre=None, tokens=tokens, types=types, scores=scores, add_space_prefix=prefix)
    return dict(model="gpt2", pre=_pre_name(spec.get("pre_tokenizer"), tokenizer_json), tokens=tokens, types=types,
                scores=None, add_space_prefix=None)


def _merge_pairs(merges) -> list:  # tokenizers writes ["a b", ...] (old) or [["a", "b"], ...] (new)
    return [tuple(m) if isinstance(m, list) else _split_merge(m) for m in merges]


def _metaspace_prefix(spec: dict, where: str) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never"
    normalizer = json.dumps(spec.get("normalizer"), ensure_ascii=False)
    if "Prepend" in normalizer and SPACE in normalizer:  # Llama 2's legacy form
        return True
    raise ValueError(f"{where}: a byte-fallback BPE without a Metaspace pre-tokenizer or a U+2581 normalizer is "
                     "not a SentencePiece tokenizer GGUF can describe")


def _pre_name(pre, where: str) -> str:
    """tokenizer.ggml.pre for a byte-level tokenizer.json's pre-tokenizer."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel":
            regex = (parts[0].get("pattern") or {}).get("Regex")
            for name, split in (("llama-bpe", LLAMA3_SPLIT), ("qwen2", QWEN2_SPLIT)):
                if regex == split:
                    return name
    raise ValueError(f"{where}: pre-tokenizer {json.dumps(pre)[:200]} matches none GGUF names "
                     "(fastdecode writes gpt-2, llama-bpe and qwen2)")


def add_to_writer(writer, directory: str, tokenizer_json: str, vocab_size: int) -> None:
    """Write the tokenizer.* keys for the checkpoint directory's tokenizer.json
    (and tokenizer_config.json: special tokens, add_bos, chat template)."""
    import gguf

    d = describe(tokenizer_json)
    if len(d["tokens"]) > vocab_size:
        raise ValueError(f"{tokenizer_json}: {len(d['tokens'])} tokens but the model has {vocab_size} embeddings")
    pad = vocab_size - len(d["tokens"])  # llama.cpp wants one token per embedding row
    tokens = d["tokens"] + [f"[PAD{i}]" for i in range(len(d["tokens"]), vocab_size)]
    writer.add_tokenizer_model(d["model"])
    if d["pre"]:
        writer.add_tokenizer_pre(d["pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(d["types"] + [UNUSED] * pad)
    if d["scores"] is not None:
        writer.add_token_scores(d["scores"] + [-1e9] * pad)
        writer.add_add_space_prefix(d["add_space_prefix"])
    special = gguf.SpecialVocab(directory, load_merges=d["model"] == "gpt2", n_vocab=vocab_size)
    # whether bos/eos are added, stated always: llama.cpp's default differs by tokenizer (true for llama-bpe)
    special.add_special_token.update(_adds_bos_eos(directory))
    special.add_to_gguf(writer, quiet=True)


def _adds_bos_eos(directory: str) -> dict:
    """{"bos": bool, "eos": bool}: what fastdecode's (and so Hugging Face's) tokenizer adds to a text."""
    from ..tokenizer import Tokenizer

    tok = Tokenizer(directory)
    plain, full = tok.encode("a", add_special_tokens=False), tok.encode("a")
    return {"bos": len(full) > len(plain) and full[0] != plain[0],
            "eos": len(full) > len(plain) and full[-1] != plain[-1]}
