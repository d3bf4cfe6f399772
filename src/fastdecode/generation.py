"""generate() and stream(): the decode loop around the model's forward pass.

One prefill call runs the whole prompt (a batch of prompts is left-padded,
see :mod:`fastdecode.model.transformer`), then one forward call per new
token. The next token comes from :func:`next_tokens`, which calls the
active backend's sampling kernel through ``fastdecode.ops``.

Stopping: the checkpoint's eos token(s) always end a sequence (unless
``ignore_eos=True``); ``stop`` adds strings and/or token ids. A stop token
is kept in ``token_ids`` (as transformers does) but not in ``text``; a stop
string ends ``text`` just before it, while ``token_ids`` keeps every token
made, up to the one that completed the string. A stop string also matches
the text of a special token (which ``text`` never shows), as transformers'
``stop_strings`` does.

Checking: :func:`steps` checks the whole request (prompt, every setting,
used or not, the context length) before any work, so ``stream()`` raises at
the call. Between tokens a stream holds nothing of the worker pool's: the
weight read-ahead order is lent for each step only.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from . import backend, ops
from .model import compiled as compiled_step
from .model.transformer import ContextOverflowError, KVCache, forward

# ---------------------------------------------------------------------------
# Settings and results
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class GenerationConfig:
    """How to choose tokens and when to stop. ``None`` fields take the
    checkpoint's generation_config.json value, else the default noted."""

    max_new_tokens: int = 64
    do_sample: bool | None = None  # default False: greedy
    temperature: float | None = None  # default 1.0
    top_k: int | None = None  # default: no top-k
    top_p: float | None = None  # default: no top-p
    min_p: float | None = None  # default: no min-p
    repetition_penalty: float | None = None  # default: none (1.0)
    stop: Sequence | str | int | None = None  # extra stop strings and/or token ids
    ignore_eos: bool = False
    logits_processors: Sequence[Callable] = ()  # fn(token_ids [B, n] int64 (-1 = padding), logits [B, V]) -> logits
    prompt_lookup_num_tokens: int | None = None  # draft up to this many tokens from the context (lookup.py)
    max_matching_ngram_size: int | None = None  # longest n-gram matched when drafting (default 2, as HF)

    def merged(self, defaults: dict) -> "GenerationConfig":
        """These settings, with None fields taken from `defaults` (generation_config.json).
        An explicit ``temperature=0`` with ``do_sample`` unset means greedy, whatever
        the defaults say (the README's rule: do what the caller asked)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if fields["do_sample"] is None and fields["temperature"] is not None and _is_zero(fields["temperature"]):
            fields["do_sample"] = False
        for key in ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if fields[key] is None and defaults.get(key) is not None:
                fields[key] = defaults[key]
        return GenerationConfig(**fields)


def _is_zero(value) -> bool:
    try:
        return np.ndim(value) == 0 and float(value) == 0
    except (TypeError, ValueError):
        return False  # not a number: validate() names it


@dataclasses.dataclass
class Timing:
    prompt_tokens: int  # summed over the batch
    prefill_s: float  # the prompt's forward pass and the choice of the first token
    generated_tokens: int  # summed over the batch; the first one comes from the prefill
    decode_s: float  # the forward passes after the prefill, their choices, detokenization
    rows: int = 1  # sequences in the batch
    cached_tokens: int = 0  # prompt tokens whose KV came from a session or the prefix cache (not prefilled)
    draft_tokens: int = 0  # prompt lookup: tokens proposed ...
    accepted_draft_tokens: int = 0  # ... and accepted

    @property
    def prompt_tokens_per_s(self) -> float | None:
        """Prompt tokens prefilled per second (cached ones not counted); None when undefined (no time measured)."""
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else None

    @property
    def generated_tokens_per_s(self) -> float | None:
        """Tokens made per second of decoding (the first token, made by the prefill, is not counted);
        None when undefined (one token per row: no decode step ran)."""
        steps = self.generated_tokens - self.rows
        return steps / self.decode_s if self.decode_s > 0 and steps > 0 else None

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


@dataclasses.dataclass
class GenerationResult:
    token_ids: list  # the new tokens (a final stop token included)
    text: str  # their text (stop tokens and stop strings excluded)
    prompt_ids: list
    finish_reason: str  # "length", "eos" (the checkpoint's), "stop" (a stop string or id of yours)
    stopped_by: object  # the stop string or token id that ended it, else None
    timing: Timing


class StreamToken(NamedTuple):
    id: int
    text: str  # the text this token completes ("" while a character or a possible stop string is pending)


# ---------------------------------------------------------------------------
# Choosing the next token
# ---------------------------------------------------------------------------

def next_tokens(logits, gen: GenerationConfig, rng, seen) -> np.ndarray:  # logits: [B, V] -> [B] int64
    """The one place the decode loop picks tokens: ``ops`` kernels, so the
    active backend runs them. seen: each row's ids so far (prompt included),
    for the repetition penalty."""
    penalty = None if gen.repetition_penalty in (None, 1.0) else gen.repetition_penalty
    if not gen.do_sample and penalty is None:
        return ops.argmax(logits)
    return ops.sample(logits, temperature=1.0 if gen.temperature is None else gen.temperature, top_k=gen.top_k,
                  top_p=gen.top_p, min_p=gen.min_p, repetition_penalty=penalty, prev_tokens=seen,
                  do_sample=bool(gen.do_sample), rng=rng)


def _processed(processors, history, logits) -> np.ndarray:  # [B, n] int64, [B, V] float32 -> [B, V] float32
    """Each processor gets an array of its own (it may keep it or write to
    it); what it returns must be float logits of the same shape."""
    for proc in processors:
        got = proc(history, logits.copy())
        arr = np.asarray(got) if got is not None else None
        if arr is None or arr.shape != logits.shape or arr.dtype.kind != "f":
            what = "None" if arr is None else f"{arr.dtype} {arr.shape}"
            raise ValueError(f"logits processor {_name(proc)} returned {what}; it must return float logits "
                             f"of the shape it was given, {logits.shape}")
        logits = arr.astype(np.float32, copy=False)
    return logits


def _name(obj) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


# ---------------------------------------------------------------------------
# Per-sequence bookkeeping: text, stop tokens, stop strings
# ---------------------------------------------------------------------------

class _Sequence:
    def __init__(self, prompt_ids, tokenizer, eos_ids: set, stop_ids: set, stop_strings: list):
        self.prompt_ids = prompt_ids
        self.token_ids: list[int] = []
        self.eos_ids, self.stop_ids, self.stop_strings = eos_ids, stop_ids, stop_strings
        self.text_stream = tokenizer.stream(context=prompt_ids) if tokenizer is not None else None
        # special tokens leave no text, but a stop string matches their text too (transformers' stop_strings)
        self.special_text = tokenizer.special_tokens if tokenizer is not None and stop_strings else {}
        self.text = ""  # all text so far (stop string excluded once found)
        self.shown = 0  # characters of text handed out as pieces
        self._full = ""  # text with special tokens' text in place: what stop strings are matched against
        self._hidden: list[tuple] = []  # (start, end) in _full of special tokens' text, which text never shows
        self.finish_reason: str | None = None
        self.stopped_by = None

    def add(self, token: int, last: bool) -> str:
        """Record a token; return the text piece safe to show now."""
        self.token_ids.append(token)
        if token in self.eos_ids or token in self.stop_ids:
            self.finish_reason, self.stopped_by = "eos" if token in self.eos_ids else "stop", token
            last = True
        elif self.text_stream is not None:
            self._extend(self.text_stream.push(token), self.special_text.get(token, ""))
        if self.finish_reason is None and last:
            self.finish_reason = "length"
        stopped_by_string = isinstance(self.stopped_by, str)  # then the text after it is dropped anyway
        if self.finish_reason is not None and not stopped_by_string and self.text_stream is not None:
            self._extend(self.text_stream.finish())  # a character left incomplete shows as U+FFFD, as decode gives it
        end = len(self.text) if self.finish_reason else len(self.text) - self._pending_stop()
        piece = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return piece

    def _extend(self, piece: str, special: str = ""):
        """Add a text piece, then a special token's text (matched, never shown); end the
        text at a stop string that the newest text completes."""
        before = len(self._full)
        self.text += piece
        self._full += piece
        if special:
            self._hidden.append((len(self._full), len(self._full) + len(special)))
            self._full += special
        if not self.stop_strings:
            return
        # earlier text was searched when it came: a new hit ends in the new text
        start = max(0, before - max(len(s) for s in self.stop_strings) + 1)
        hits = [(i, s) for s in self.stop_strings if (i := self._full.find(s, start)) >= 0]
        if hits:
            i, s = min(hits)
            self.text, self.finish_reason, self.stopped_by = self.text[:self._visible(i)], "stop", s

    def _visible(self, i: int) -> int:
        """How many characters of text precede position i of _full."""
        return i - sum(min(end, i) - start for start, end in self._hidden if start < i)

    def _pending_stop(self) -> int:
        """Characters at the end of the text that could begin a stop string (held back)."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(self._full)), best, -1):
                if self._full.endswith(s[:n]):
                    best = n
                    break
        return len(self.text) - self._visible(len(self._full) - best)

    def result(self, timing: Timing) -> GenerationResult:
        return GenerationResult(list(self.token_ids), self.text, list(self.prompt_ids), self.finish_reason,
                                self.stopped_by, timing)


# ---------------------------------------------------------------------------
# Checking the request (all of it, before any work)
# ---------------------------------------------------------------------------

def is_batch(prompt) -> bool:
    """A list of prompts (texts or id lists), rather than one prompt?"""
    _check_prompt_type(prompt, "prompt")
    return not isinstance(prompt, str) and len(prompt) > 0 and (isinstance(prompt[0], str) or np.ndim(prompt[0]) > 0)


def _check_prompt_type(prompt, name):
    if isinstance(prompt, (str, np.ndarray)) or (isinstance(prompt, Sequence) and not isinstance(prompt, bytes)):
        return
    raise TypeError(f"{name} must be a str, a sequence of token ids, or a list of either (a batch); "
                    f"got {type(prompt).__name__}")


def _prompts(model, prompt) -> tuple[list, bool]:
    """(list of id lists, batched?) from a str, ids, or a list of either."""
    def ids_of(p, name):
        if isinstance(p, str):
            if model.tokenizer is None:
                raise ValueError("this model has no tokenizer.json: pass token ids, not text")
            try:
                p.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{name} holds a lone surrogate {p[exc.start]!r} at index {exc.start}, "
                                 "which is not text (it has no UTF-8 encoding)") from None
            return model.tokenizer.encode(p)
        _check_prompt_type(p, name)
        ids = np.asarray(p)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"{name} must be a str or a 1-D sequence of token ids; got {ids.dtype} {ids.shape}")
        return [int(i) for i in ids]

    batched = is_batch(prompt)
    prompts = [ids_of(p, f"prompt[{i}]" if batched else "prompt")
               for i, p in enumerate(prompt if batched else [prompt])]
    v = model.config.vocab_size
    for ids in prompts:
        if not ids:
            if model.config.bos_token_id is None:
                raise ValueError("the prompt is empty and the model has no bos token to start from")
            ids.append(model.config.bos_token_id)
        bad = [i for i in ids if not 0 <= i < v]
        if bad:
            raise ValueError(f"token ids must lie in [0, {v}); got {bad[:5]}")
    return prompts, batched


def _stops(model, gen: GenerationConfig) -> tuple[set, set, list]:
    """(eos ids, other stop ids, stop strings)"""
    stop = gen.stop
    stop = [] if stop is None else [stop] if isinstance(stop, (str, int, np.integer)) else list(stop)
    eos = set() if gen.ignore_eos else set(model.eos_token_ids)
    ids, strings = set(), []
    for s in stop:
        if isinstance(s, str):
            if not s:
                raise ValueError("stop strings must not be empty")
            strings.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            ids.add(int(s))
        else:
            raise TypeError(f"stop must hold str and int items; got {type(s).__name__}")
    if strings and model.tokenizer is None:
        raise ValueError("stop strings need a tokenizer (this model has no tokenizer.json)")
    return eos, ids - eos, strings


def _flag(value, name: str, allow_none: bool = False):
    if (value is None and allow_none) or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise TypeError(f"{name} must be True or False{' or None' if allow_none else ''}; got {value!r}")


def validate(gen: GenerationConfig, rows: int = 1) -> GenerationConfig:
    """Every setting checked, used or not (a greedy run still refuses
    ``top_p=7``), by the same rules as :func:`fastdecode.sample`. Returns the
    settings with flags as bools. Raises TypeError/ValueError naming the setting."""
    n = gen.max_new_tokens
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {n!r}")
    do_sample = _flag(gen.do_sample, "do_sample", allow_none=True)
    ignore_eos = _flag(gen.ignore_eos, "ignore_eos")
    processors = gen.logits_processors
    if callable(processors) or not all(callable(p) for p in processors):
        raise TypeError("logits_processors must be a sequence of callables fn(token_ids, logits) -> logits")
    t = 1.0 if gen.temperature is None else gen.temperature
    if do_sample and _is_zero(t):
        raise ValueError("temperature must be > 0 when do_sample=True; for greedy decoding use "
                         "do_sample=False or temperature=0 (with do_sample unset)")
    # fastdecode.process_logits checks each value as fastdecode.sample would (messages name the setting)
    ops.process_logits(np.zeros((rows, 1), np.float32), temperature=t, top_k=gen.top_k, top_p=gen.top_p,
                       min_p=gen.min_p, repetition_penalty=gen.repetition_penalty, prev_tokens=[[0]] * rows)
    return dataclasses.replace(gen, do_sample=do_sample, ignore_eos=ignore_eos, max_new_tokens=int(n),
                               logits_processors=tuple(processors))


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rng must be None, a non-negative int seed or a numpy.random.Generator; "
                        f"got {rng!r} ({exc})") from None


def _history(rows) -> np.ndarray:  # rows: B id lists -> [B, n] int64, left-padded with -1
    n = max(len(r) for r in rows)
    out = np.full((len(rows), n), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, n - len(r):] = r
    return out


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def steps(model, prompt, gen: GenerationConfig, rng=None, cache_store=None) -> Iterator:
    """Check the whole request now, then return the decode loop: a generator
    that yields (sequences, pieces) after each token and returns the results
    (StopIteration.value).

    cache_store: where the KV cache comes from and goes back to, an object
    with ``take(ids, need) -> (KVCache, reused)`` and ``put(ids, cache)``
    (a :class:`~fastdecode.session.Session`); default: the model's prefix
    cache for one prompt, else a fresh cache."""
    if not isinstance(gen, GenerationConfig):
        raise TypeError(f"config must be a fastdecode.GenerationConfig; got {type(gen).__name__}")
    prompts, batched = _prompts(model, prompt)
    gen = validate(gen.merged(model.generation_defaults), len(prompts))
    stops = _stops(model, gen)
    rng = _generator(rng)
    lengths = np.array([len(p) for p in prompts], np.int64)
    need = int(lengths.max()) + gen.max_new_tokens - 1  # the last token is never fed back
    if need > model.config.max_positions:
        raise ContextOverflowError(
            f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({gen.max_new_tokens}) needs {need} positions; "
            f"the model takes at most {model.config.max_positions}")
    drafter = None
    if gen.prompt_lookup_num_tokens:
        from .lookup import PromptLookup

        drafter = PromptLookup(gen.prompt_lookup_num_tokens, gen.max_matching_ngram_size, len(prompts),
                               stops[0] | stops[1])
    seqs = [_Sequence(p, model.tokenizer, *stops) for p in prompts]
    store = cache_store if cache_store is not None else getattr(model, "prefix_cache", None) if not batched else None
    return _loop(model, prompts, batched, lengths, need, seqs, gen, rng, store, drafter)


def _chunk(rows) -> tuple[np.ndarray, np.ndarray]:  # rows: B id lists -> tokens [B, T] left-padded, counts [B]
    counts = np.array([len(r) for r in rows], np.int64)
    tokens = np.zeros((len(rows), int(counts.max())), np.int64)
    for i, r in enumerate(rows):
        tokens[i, tokens.shape[1] - len(r):] = r
    return tokens, counts


def _loop(model, prompts, batched, lengths, need, seqs, gen, rng, store, drafter):
    if store is not None:
        cache, reused = store.take(prompts[0], need)
    else:
        cache, reused = KVCache(model.config, len(prompts), need), 0

    def choose(logits, pending=None):  # pending: per row, tokens chosen after the sequence's (drafts being checked)
        penalized = gen.repetition_penalty not in (None, 1.0)
        rows = [p + s.token_ids + (pending[i] if pending else []) for i, (p, s) in enumerate(zip(prompts, seqs))] \
            if gen.logits_processors or penalized else None
        if gen.logits_processors:
            logits = _processed(gen.logits_processors, _history(rows), logits)
        return next_tokens(logits, gen, rng, rows if penalized else None)

    # -- the compiled step (fastdecode.model.compiled): on the C backend one C call per step, the token
    # choice included unless Python logits processors need the logits; the NumPy backend runs forward()
    # (prompt lookup's drafts are checked by forward() too)
    compiled = compiled_step.for_model(model)

    def forward_choose(tokens, counts=None):  # tokens [B, T] -> the chosen ids [B]
        if compiled is None:
            return choose(forward(model.weights, model.config, tokens, cache, counts=counts, out=logits))
        if gen.logits_processors:
            return choose(compiled.forward(tokens, cache, counts=counts, out=logits))
        penalized = gen.repetition_penalty not in (None, 1.0)
        return compiled.next_tokens(
            tokens, cache, counts=counts, out=logits, do_sample=bool(gen.do_sample),
            temperature=1.0 if gen.temperature is None else gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
            min_p=gen.min_p, repetition_penalty=gen.repetition_penalty if penalized else None, rng=rng,
            prev_tokens=[p + s.token_ids for p, s in zip(prompts, seqs)] if penalized else None)
    # -- end of the compiled step

    def advance(new):  # each row's new tokens -> the tokens that follow them, per row
        if drafter is not None:
            return drafter.step(model, cache, prompts, seqs, new, gen.max_new_tokens, choose)
        return [[int(t)] for t in forward_choose(np.array([[n[-1]] for n in new], np.int64))]

    try:
        # the clock runs while this loop works, not while the caller holds a yielded piece
        t0 = time.perf_counter()
        logits = np.empty((len(prompts), model.config.vocab_size), np.float32)  # reused by every step
        tokens, counts = _chunk([p[reused:] for p in prompts])
        new = [[int(t)] for t in forward_choose(tokens, counts)]
        prefill_s, decode_s = time.perf_counter() - t0, 0.0
        while True:
            for j in range(max(len(n) for n in new)):  # hand out the new tokens one at a time
                t0 = time.perf_counter()
                pieces = [s.add(n[j], len(s.token_ids) + 1 >= gen.max_new_tokens)
                          if j < len(n) and s.finish_reason is None else None for s, n in zip(seqs, new)]
                decode_s += time.perf_counter() - t0
                yield seqs, pieces  # holds nothing of the pool's: a suspended stream lends the next loop its read-ahead
            if all(s.finish_reason is not None for s in seqs):
                break
            t0 = time.perf_counter()
            # workers read ahead between projections and poll between kernels while a step runs; generate()
            # holds the order for the whole loop, so this re-lends it only after a stream's caller had it
            with backend.weight_order(model.weights.decode_order()), backend.decode_spin():
                new = advance(new)
            decode_s += time.perf_counter() - t0
    finally:  # also when the caller stops early: the store keeps what the cache holds
        if store is not None:
            store.put(prompts[0] + seqs[0].token_ids, cache)
    timing = Timing(int(lengths.sum()), prefill_s, sum(len(s.token_ids) for s in seqs), decode_s, len(seqs),
                    reused, *(drafter.counts() if drafter is not None else (0, 0)))
    results = [s.result(timing) for s in seqs]
    return results if batched else results[0]


def drain(loop):
    """Run a generator to its end; returns its return value."""
    while True:
        try:
            next(loop)
        except StopIteration as done:
            return done.value


def generate(model, prompt, gen: GenerationConfig, rng=None):
    loop = steps(model, prompt, gen, rng)
    try:
        next(loop)  # the prefill, and the first token
        with backend.weight_order(model.weights.decode_order()):  # nothing runs between steps: hold it throughout
            while True:
                next(loop)
    except StopIteration as done:
        return done.value


def stream(model, prompt, gen: GenerationConfig, rng=None, cache_store=None) -> Iterator[StreamToken]:
    """Checks the request at once (raising here, before any token), then
    returns a generator of StreamToken(id, text piece) per token of one
    prompt, which returns the GenerationResult. While suspended it holds
    the model and its cache, nothing else: close() or dropping it frees them."""
    if is_batch(prompt):
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    return _stream(steps(model, prompt, gen, rng, cache_store))


def _stream(loop) -> Iterator[StreamToken]:
    while True:
        try:
            seqs, pieces = next(loop)
        except StopIteration as done:
            return done.value
        yield StreamToken(seqs[0].token_ids[-1], pieces[0])
