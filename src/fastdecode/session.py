"""Sessions: a conversation whose KV cache lives from one turn to the next.

    session = model.session()                      # or model.session("chat.npz") to resume
    print(session.chat("Hi, who are you?").text)   # turn 1 prefills the whole prompt
    print(session.chat("And what can you do?").text)   # turn 2 prefills only its new tokens
    session.save("chat.npz")

Each turn renders the whole conversation with the chat template (or, for
``generate``, appends the new text's ids to everything said so far) and
hands the ids to the decode loop with the session as its cache store: the
cached keys and values of the longest common prefix are kept, the rest is
prefilled. So a turn gives the tokens a cold run on the full transcript
gives (up to the rounding of a split prefill), even where the template
renders an earlier answer differently from the tokens the model produced.

The cache starts at the first turn's size and grows (at least doubling,
up to the model's context) when a turn needs more. A turn that does not
fit the context raises :class:`~fastdecode.model.ContextOverflowError`,
or, with ``overflow="drop_oldest"``, drops the oldest messages after the
system prompt until it fits (the kept prefix is then re-prefilled).
"""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np

from . import generation
from .chat import ChatTemplateError, chat_ids, end_of_turn_ids, template_of, with_stops
from .model.transformer import ContextOverflowError, KVCache
from .prefix_cache import common_prefix, copy_prefix

FORMAT = "fastdecode-session-1"
OVERFLOW_POLICIES = ("error", "drop_oldest")


def fingerprint(model) -> str:
    """sha256 of the config and a sample of the weights: a session file is
    only valid for the model whose keys and values it holds."""
    h = hashlib.sha256(repr(model.config).encode())
    for a in (model.weights.embed, model.weights.final_norm, model.weights.head):
        a = np.asarray(getattr(a, "data", a)) if not isinstance(a, np.ndarray) else a
        flat = a.reshape(-1)
        h.update(np.ascontiguousarray(flat[:: max(1, flat.size // 65536)]).tobytes())
    return h.hexdigest()


def _as_messages(message) -> list:
    if isinstance(message, str):
        return [{"role": "user", "content": message}]
    if isinstance(message, dict):
        return [dict(message)]
    if isinstance(message, (list, tuple)) and all(isinstance(m, dict) for m in message):
        return [dict(m) for m in message]
    raise TypeError(f"message must be a str (a user message), a message dict, or a list of them; got "
                    f"{type(message).__name__}")


class Session:
    """A conversation with ``model`` that keeps its KV cache between turns.

    ``template``: a Jinja2 chat template overriding the checkpoint's.
    ``overflow``: ``"error"`` (default) or ``"drop_oldest"`` (see the module
    docs). ``path``: a file written by :meth:`save` to resume from.
    One generation at a time per session (a second, concurrent one raises
    RuntimeError); many sessions can share one model.
    """

    def __init__(self, model, path=None, *, template: str | None = None, overflow: str = "error"):
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}; got {overflow!r}")
        self.model, self.overflow, self._template_source = model, overflow, template
        self.messages: list = []  # the conversation (chat turns)
        self.history: list = []  # every id said so far: prompts and answers
        self._cache: KVCache | None = None
        self._ids = np.zeros(0, np.int64)  # the ids whose keys and values _cache holds
        self._busy = threading.Lock()
        if path is not None:
            self._load(path)

    # -- the cache store protocol of generation.steps -----------------------

    def take(self, ids, need: int) -> tuple[KVCache, int]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this session is already generating; a session runs one generation at a time")
        ids = np.asarray(ids, np.int64)
        cache, self._cache = self._cache, None  # lent out until put()
        n = min(common_prefix(self._ids, ids), len(ids) - 1) if cache is not None else 0
        self._ids = self._ids[:0]
        if cache is None or cache.max_len < need:
            size = need if cache is None else min(max(need, 2 * cache.max_len), self.model.config.max_positions)
            cache = copy_prefix(self.model.config, cache, n, size) if cache is not None else \
                KVCache(self.model.config, 1, size)
        cache.lengths[:] = n
        return cache, n

    def put(self, ids, cache: KVCache):
        n = min(int(cache.lengths[0]), len(ids))
        self._cache, self._ids = cache, np.asarray(ids[:n], np.int64)
        self._busy.release()

    # -- turns -----------------------------------------------------------------

    def generate(self, prompt, *, max_new_tokens: int = 64, rng=None, config=None, **settings):
        """Continue everything said so far with ``prompt`` (text or ids) and an
        answer; returns the GenerationResult (its ``prompt_ids`` are the whole
        history). Settings as :meth:`Model.generate`."""
        return generation.drain(self.stream(prompt, max_new_tokens=max_new_tokens, rng=rng, config=config,
                                            **settings))

    def stream(self, prompt, *, max_new_tokens: int = 64, rng=None, config=None, **settings):
        """Like :meth:`generate`, yielding ``StreamToken(id, text)`` per token."""
        if isinstance(prompt, str):  # text after the first turn's continues it: no second bos
            new = self.model.encode(prompt) if not self.history or self.model.tokenizer is None else \
                self.model.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            new, _ = generation._prompts(self.model, prompt)
            new = new[0]
        gen = self.model._settings(config, max_new_tokens, settings)
        return self._turn(self.history + list(new), gen, rng, None)

    def chat(self, message, *, max_new_tokens: int = 256, rng=None, config=None, **settings):
        """Add ``message`` (a str is a user message; or a message dict, or a
        list of them) and answer it; the answer joins ``messages``. Stops at
        the template's end-of-turn token. Returns the GenerationResult."""
        return generation.drain(self.stream_chat(message, max_new_tokens=max_new_tokens, rng=rng, config=config,
                                                 **settings))

    def stream_chat(self, message, *, max_new_tokens: int = 256, rng=None, config=None, **settings):
        """Like :meth:`chat`, yielding ``StreamToken(id, text)`` per token."""
        template = template_of(self.model, self._template_source)
        messages = self.messages + _as_messages(message)
        gen = self.model._settings(config, max_new_tokens, settings)
        ids = self._fit(template, messages, gen.max_new_tokens)
        return self._turn(ids, with_stops(gen, end_of_turn_ids(template, self.model.tokenizer)), rng, messages)

    def _fit(self, template, messages, max_new_tokens) -> list:
        """The ids of messages, rendered; with overflow="drop_oldest", the oldest
        messages after a system prompt dropped (in place) until the turn fits."""
        limit = self.model.config.max_positions
        while True:
            ids = chat_ids(self.model, template, messages)
            if len(ids) + max_new_tokens - 1 <= limit:
                return ids
            first = 1 if messages and messages[0]["role"] == "system" else 0
            if self.overflow == "error" or len(messages) - first <= 1:
                raise ContextOverflowError(
                    f"the conversation ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) needs "
                    f"{len(ids) + max_new_tokens - 1} positions; the model takes at most {limit}"
                    + (" (use overflow='drop_oldest' to drop old turns)" if self.overflow == "error" else ""))
            del messages[first]

    def _turn(self, ids, gen, rng, messages):
        got, text, result = [], [], None
        try:
            result = yield from _tracked(generation.stream(self.model, ids, gen, rng, cache_store=self), got, text)
            return result
        finally:  # an answer cut short (Ctrl-C, a closed stream) still counts as said
            self.history = list(ids) + got
            if messages is not None:
                self.messages = messages + [{"role": "assistant", "content": result.text if result else "".join(text)}]

    def reset(self):
        """Forget the conversation (the cache's memory is kept for the next one)."""
        self.messages, self.history, self._ids = [], [], self._ids[:0]

    # -- files ----------------------------------------------------------------

    def save(self, path):
        """Write the conversation and its KV cache to ``path`` (a NumPy .npz)."""
        n = len(self._ids) if self._cache is not None else 0
        meta = dict(format=FORMAT, fingerprint=fingerprint(self.model), messages=self.messages, overflow=self.overflow)
        empty = np.zeros((self.model.config.num_layers, 1, self.model.config.num_kv_heads, 0,
                          self.model.config.head_dim), np.float32)
        with open(path, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), ids=self._ids,
                     history=np.asarray(self.history, np.int64),
                     k=self._cache.k[:, :, :, :n] if n else empty, v=self._cache.v[:, :, :, :n] if n else empty)

    def _load(self, path):
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(f["meta"].tobytes().decode())
                ids, history, k, v = f["ids"], f["history"], f["k"], f["v"]
        except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a fastdecode session file ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a fastdecode session file (format {meta.get('format')!r})")
        if meta.get("fingerprint") != fingerprint(self.model):
            raise ValueError(f"{path}: this session was saved with another model (its keys and values are that "
                             "model's); load it with the model that made it")
        c = self.model.config
        shape = (c.num_layers, 1, c.num_kv_heads, len(ids), c.head_dim)
        if k.shape != shape or v.shape != shape or ids.ndim != 1 or history.ndim != 1:
            raise ValueError(f"{path}: a damaged session file (K/V shape {k.shape}, expected {shape})")
        self.messages, self.history = list(meta.get("messages", [])), [int(i) for i in history]
        self._ids = ids.astype(np.int64)
        if len(ids):
            self._cache = KVCache(c, 1, len(ids))
            self._cache.k[...], self._cache.v[...] = k, v
            self._cache.lengths[:] = len(ids)


def _tracked(stream, got: list, text: list):
    """Pass a stream through, noting the ids and text handed out."""
    try:
        while True:
            try:
                token = next(stream)
            except StopIteration as done:
                return done.value
            got.append(token.id)
            text.append(token.text)
            yield token
    finally:
        stream.close()  # now, not at garbage collection: the cache goes back to the session


__all__ = ["Session", "fingerprint", "ChatTemplateError"]
