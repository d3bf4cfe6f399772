"""A thin wrapper over the ``tokenizers`` library, and streaming detokenization.

:class:`Tokenizer` reads ``tokenizer.json`` (and, when present,
``tokenizer_config.json`` for the bos/eos tokens and whether to add bos).
:class:`TextStream` turns token ids into text pieces as they come, and never
emits a piece that ends inside a multi-byte UTF-8 character: a byte-level
tokenizer can split "é" over two tokens, and decoding the first alone gives
U+FFFD. The pieces always join to ``decode(all ids)``.
"""
from __future__ import annotations

import os

from .model.config import read_json

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 6  # ids of context decoded before a new one (enough for any merge across a piece boundary)


class Tokenizer:
    def __init__(self, path: str):
        """path: a tokenizer.json, or a directory holding one."""
        from tokenizers import Tokenizer as _HFTokenizer

        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: no tokenizer.json (pass token ids instead of text, or add one)")
        try:
            self._tok = _HFTokenizer.from_file(file)
        except Exception as exc:  # the tokenizers library raises a bare Exception on malformed files
            raise ValueError(f"{file}: not a readable tokenizer.json: {exc}") from None
        self.path = file
        self.chat_template = None
        extra = read_json(os.path.join(directory, "tokenizer_config.json"))
        self.bos_token_id = self._token_id(extra.get("bos_token"))
        self.eos_token_id = self._token_id(extra.get("eos_token"))
        # tokenizer.json's post-processor usually adds bos itself; add_bos_token is for those that do not
        self._add_bos = bool(extra.get("add_bos_token", False)) and self.bos_token_id is not None
        self._special = None

    @classmethod
    def from_tokenizers(cls, tok, bos_token_id=None, eos_token_id=None, path=None, chat_template=None) -> "Tokenizer":
        """Wrap a ``tokenizers.Tokenizer`` built elsewhere (a GGUF file's: its
        post-processor already adds bos/eos as the file says)."""
        self = cls.__new__(cls)
        self._tok, self.path, self.chat_template = tok, path, chat_template
        self.bos_token_id, self.eos_token_id, self._add_bos = bos_token_id, eos_token_id, False
        return self

    def _token_id(self, token) -> int | None:
        if isinstance(token, dict):  # {"content": "<s>", ...}
            token = token.get("content")
        return None if token is None else self._tok.token_to_id(token)

    @property
    def special_tokens(self) -> dict:
        """{id: text} of the special tokens, whose text decode skips (stop strings still match it)."""
        if self._special is None:
            self._special = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        return self._special

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._add_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream(self, context=(), skip_special_tokens: bool = True) -> "TextStream":
        return TextStream(self, context, skip_special_tokens)


class TextStream:
    """Incremental detokenization: ``push(id)`` returns the text that id
    completes ("" while a multi-byte character is still incomplete);
    ``finish()`` returns whatever was held back.

    ``context`` (e.g. the prompt's ids) is text already shown: the pieces
    continue it, so a SentencePiece tokenizer's leading space on the first
    new token is kept. Context that ends inside a character shows that
    character as U+FFFD; the id that completes it streams the whole
    character. So for any split, ``decode(context)`` less its trailing
    U+FFFD placeholders, joined with the pieces, is ``decode(context + ids)``.
    Only a short window of recent ids is decoded at each step, never the
    whole sequence.
    """

    def __init__(self, tokenizer: Tokenizer, context=(), skip_special_tokens: bool = True):
        self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens)
        self.ids: list[int] = [int(i) for i in context]
        self._read = len(self.ids)  # ids[:_read] are shown
        self._prefix = max(0, self._read - CONTEXT_TOKENS)  # ids[_prefix:_read]: context of the next piece

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._next(final=False)

    def finish(self) -> str:
        """The rest, incomplete characters included (as U+FFFD, as decode gives them)."""
        return self._next(final=True)

    def _next(self, final: bool) -> str:
        emitted = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        same = _common_prefix(emitted, text)
        # shown text may differ from the new decode only where it showed placeholders for bytes of a
        # character the context left incomplete; a piece that changes real text waits for more ids
        settled = not emitted[same:].strip(REPLACEMENT)
        if not final and (not settled or len(text) <= same or text.endswith(REPLACEMENT)):
            return ""
        self._prefix, self._read = (self._read, len(self.ids)) if not final else (len(self.ids), len(self.ids))
        return text[same:]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
