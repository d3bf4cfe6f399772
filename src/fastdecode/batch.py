"""Continuous batching: many prompts decoded together on one machine.

``model.generate_many(prompts, max_batch=B)`` keeps up to B sequences in
one KV cache ``[layers, B, Hkv, max_len, D]`` and decodes them with one
forward call per step, so every weight read serves B tokens. A row that
finishes frees its slot at once and the next waiting prompt takes it (as
vLLM and TGI schedule), instead of the batch waiting for its longest
answer. A newcomer's prompt is prefilled alone, in chunks of at most
``prefill_chunk`` tokens per step, between the decode steps of the others,
so running rows wait for one chunk, never for a whole long prompt.

Each row is decoded as ``generate()`` decodes that prompt alone: the same
prefill call (a prompt within one chunk), the same stop rules
(:mod:`fastdecode.generation`), and its own random stream, so what a row
draws does not depend on which rows share its batch. Row i with its own
``seed`` uses ``numpy.random.default_rng(seed)``; without one, a base
``rng=S`` gives it ``default_rng([S, i])`` — ``generate(prompt_i,
rng=[S, i])`` makes the same tokens. Greedy and sampled ids equal
``generate()``'s unless two candidates lie within float32 rounding of each
other: a batched projection sums in another order than a one-row one (the
same holds for ``generate([...])``).

The engine calls one per-step function, ``step(tokens [B, T] int64, cache,
counts [B] | None, out [B, V] float32) -> logits [B, V]``: by default
:func:`default_step`, the compiled step generate() runs (C backend), else
:func:`model_step`, the NumPy forward; any function with that signature
plugs in through ``generate_many(step=...)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from . import backend, ops
from .generation import (GenerationConfig, GenerationResult, Timing, _processed, _prompts, _Sequence, _stops,
                         next_tokens, validate)
from .model import compiled as compiled_step
from .model.transformer import ContextOverflowError, KVCache, forward

__all__ = ["Request", "Completion", "prepare", "row_seed", "generate_many", "model_step", "default_step"]

_NOT_SETTINGS = ("prompt", "messages", "seed")


class Completion(NamedTuple):
    index: int  # the prompt's position in the input
    result: GenerationResult


@dataclasses.dataclass
class Request:
    """One prompt, ready to decode: token ids, merged settings, its seed."""

    index: int
    prompt_ids: list
    config: GenerationConfig  # merged with the checkpoint's generation_config.json
    seed: object  # what numpy.random.default_rng takes: None, an int, or a list of ints

    @property
    def positions(self) -> int:  # cache positions it needs (the last token is never fed back)
        return len(self.prompt_ids) + self.config.max_new_tokens - 1


def row_seed(seed, key):
    """The seed of a row with no seed of its own: ``[seed, key]`` (a
    ``numpy.random.SeedSequence`` entropy list), so rows draw independent
    streams that do not depend on batch composition or order. ``key``: the
    input index, or a job's record id (a str is hashed with SHA-256, so the
    same id gets the same stream on every machine). None when ``seed`` is."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"rng must be None or a non-negative int seed for generate_many (each row derives its own "
                        f"stream from it); got {seed!r}")
    if not isinstance(key, (int, np.integer)) or isinstance(key, bool) or key < 0:
        key = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")
    return [int(seed), int(key)]


def prepare(model, item, index: int, config: GenerationConfig, rng=None, key=None) -> Request:
    """A :class:`Request` from one input item: a str, a list of token ids, or
    a dict ``{"prompt": str | ids, "seed": int, <any GenerationConfig
    field>: value}`` whose settings override ``config``. In place of
    ``"prompt"``, ``"messages"`` (a conversation, ``[{"role": ..., "content":
    ...}, ...]``) is rendered with the checkpoint's chat template and stops
    at its end-of-turn token, as :meth:`fastdecode.Model.chat` does. ``key``
    (default ``index``) names the row for :func:`row_seed`. Raises TypeError
    or ValueError (ContextOverflowError when the prompt plus max_new_tokens
    exceed the model; fastdecode.chat.ChatTemplateError for messages to a
    model without a chat template) for a bad item."""
    seed = row_seed(rng, index if key is None else key)
    if isinstance(item, dict):
        if ("prompt" in item) == ("messages" in item):
            raise ValueError("a dict prompt needs a 'prompt' key (text or token ids) or a 'messages' key "
                             "(a conversation), not both")
        if "seed" in item and item["seed"] is not None:
            seed = item["seed"]
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise TypeError(f"seed must be a non-negative int; got {seed!r}")
            seed = int(seed)
        overrides = {k: v for k, v in item.items() if k not in _NOT_SETTINGS}
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        config = dataclasses.replace(config, **overrides)
        if "messages" in item:
            from . import chat

            item, config = chat.prepare(model, item["messages"], config)
        else:
            item = item["prompt"]
    if isinstance(item, (list, tuple, np.ndarray)) and len(item) and not isinstance(item[0], (int, np.integer)):
        raise TypeError(f"a prompt is a str or a list of token ids; got a list of {type(item[0]).__name__}")
    (ids,), _ = _prompts(model, item)
    config = validate(config.merged(model.generation_defaults))
    request = Request(index, ids, config, seed)
    if request.positions > model.config.max_positions:
        raise ContextOverflowError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({config.max_new_tokens}) needs {request.positions} "
            f"positions; the model takes at most {model.config.max_positions}")
    return request


def model_step(model) -> Callable:
    """The per-step function: the NumPy forward, its kernels on the active backend."""
    def step(tokens, cache, counts=None, out=None):  # tokens: [B, T] int64 -> [B, V] float32
        return forward(model.weights, model.config, tokens, cache, counts=counts, out=out)
    return step


def default_step(model) -> Callable:
    """The step generate() would run: the compiled step (one C call per
    step, :mod:`fastdecode.model.compiled`) on the C backend, else
    :func:`model_step`."""
    compiled = compiled_step.for_model(model)
    return model_step(model) if compiled is None else compiled.forward


# ---------------------------------------------------------------------------
# One row in a slot
# ---------------------------------------------------------------------------

class _Row:
    def __init__(self, model, request: Request):
        self.request, self.config = request, request.config
        self.seq = _Sequence(request.prompt_ids, model.tokenizer, *_stops(model, request.config))
        self.rng = np.random.default_rng(request.seed)
        self.fed = 0  # prompt tokens in `prefill`, then in the batch's cache
        # the prompt is prefilled into a cache of its own (contiguous, as the compiled step needs), then copied
        # into the row's slot: one copy of its keys and values per row, no batch-wide step per chunk
        self.prefill = KVCache(model.config, 1, len(request.prompt_ids))
        self.pending = None  # the token to feed at the next decode step
        self.prefill_s = self.decode_s = 0.0
        c = self.config
        self.plain_greedy = not c.do_sample and c.repetition_penalty in (None, 1.0) and not c.logits_processors

    def choose(self, logits) -> int:  # logits: [1, V] -> the next id, as generation.steps() picks it
        c, history = self.config, self.request.prompt_ids + self.seq.token_ids
        if c.logits_processors:
            logits = _processed(c.logits_processors, np.array([history], np.int64), logits)
        seen = [history] if c.repetition_penalty not in (None, 1.0) else None
        return int(next_tokens(logits, c, self.rng, seen)[0])

    def add(self, token: int) -> bool:
        """Record a chosen token; True when the row is done."""
        self.seq.add(token, len(self.seq.token_ids) + 1 == self.config.max_new_tokens)
        self.pending = token
        return self.seq.finish_reason is not None

    def result(self) -> GenerationResult:
        t = Timing(len(self.request.prompt_ids), self.prefill_s, len(self.seq.token_ids), self.decode_s)
        return self.seq.result(t)


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

def _settle(cache: KVCache, slot: int, row: _Row) -> None:
    """Move a row's prefilled keys and values into its slot of the batch cache."""
    n = len(row.request.prompt_ids)
    cache.k[:, slot, :, :n] = row.prefill.k[:, 0, :, :n]
    cache.v[:, slot, :, :n] = row.prefill.v[:, 0, :, :n]
    cache.lengths[slot] = n
    row.prefill = None


def _grown(cache: KVCache | None, config, rows: int, need: int) -> KVCache:
    """A cache holding at least `need` positions per row, the old contents kept."""
    if cache is not None and cache.max_len >= need:
        return cache
    size = need if cache is None else min(max(need, 2 * cache.max_len), config.max_positions)
    new = KVCache(config, rows, size)
    if cache is not None:
        new.k[:, :, :, :cache.max_len] = cache.k
        new.v[:, :, :, :cache.max_len] = cache.v
        new.lengths[:] = cache.lengths
    return new


def _shrunk(cache: KVCache, config, slots: list, order: list) -> tuple:
    """(cache, slots, order) holding only the occupied slots, in the same order; the rows' keys and values copied."""
    kept = [s for s in range(len(slots)) if slots[s] is not None]
    new = KVCache(config, len(kept), cache.max_len)
    new.k[:] = cache.k[:, kept]
    new.v[:] = cache.v[:, kept]
    new.lengths[:] = cache.lengths[kept]
    place = {s: i for i, s in enumerate(kept)}
    return new, [slots[s] for s in kept], [place[s] for s in order]


def run(model, requests: Iterable[Request], max_batch: int, prefill_chunk: int, step: Callable) -> Iterator[Completion]:
    """Decode `requests`, up to `max_batch` at a time; yield each as it finishes."""
    waiting = iter(requests)
    slots: list = [None] * max_batch
    cache, order = None, []  # order: slots in admission order (prefill is first come, first served)
    logits = np.empty((max_batch, model.config.vocab_size), np.float32)
    tokens = np.zeros((max_batch, 1), np.int64)
    reads = model.weights.decode_order()
    while True:
        for s in range(len(slots)):
            if slots[s] is None and waiting is not None:
                request = next(waiting, None)
                if request is None:
                    waiting = None
                    break
                cache = _grown(cache, model.config, max_batch, request.positions)
                slots[s] = _Row(model, request)
                order.append(s)
        if not order:
            return
        done = _prefill(slots, order, cache, logits, prefill_chunk, step)
        decoding = [s for s in order if slots[s].fed == len(slots[s].request.prompt_ids) and s not in done]
        if decoding:
            done += _decode(slots, decoding, cache, logits, tokens, step, reads)
        for s in done:
            row, slots[s] = slots[s], None
            order.remove(s)
            cache.lengths[s] = 0  # an empty slot decodes a dummy at position 0 until refilled
            yield Completion(row.request.index, row.result())
        if waiting is None and 0 < len(order) <= len(slots) // 2:
            # the input is spent and half the slots decode dummies (as much work as real rows): move the rows
            # left into a cache of their own size (the tail of a B = 64 job wastes ~20% of its steps otherwise)
            cache, slots, order = _shrunk(cache, model.config, slots, order)
            logits, tokens = logits[:len(slots)], tokens[:len(slots)]


def _prefill(slots, order, cache, logits, budget: int, step) -> list:
    """Feed up to `budget` prompt tokens of the rows still prefilling, each
    row alone; a row whose prompt is in takes its first token. Returns the
    slots that finished on it."""
    done = []
    for s in order:
        row = slots[s]
        prompt = row.request.prompt_ids
        n = min(budget, len(prompt) - row.fed)
        if n <= 0:
            if budget <= 0:
                break
            continue
        t0 = time.perf_counter()
        out = step(np.array([prompt[row.fed:row.fed + n]], np.int64), row.prefill, None, logits[s:s + 1])
        row.fed += n
        budget -= n
        if row.fed == len(prompt):
            _settle(cache, s, row)
            if row.add(row.choose(out)):
                done.append(s)
        row.prefill_s += time.perf_counter() - t0
    return done


def _decode(slots, decoding, cache, logits, tokens, step, reads) -> list:
    """One decode step for every slot: rows in `decoding` feed their last
    token; the others (empty, or mid-prefill) feed a dummy whose cache entry
    is dropped again. Returns the slots that finished."""
    t0 = time.perf_counter()
    kept = cache.lengths.copy()
    tokens[:] = 0
    for s in decoding:
        tokens[s, 0] = slots[s].pending
    # workers read ahead between projections and poll between kernels while a step runs (as generate's
    # loop does: held per step, so a suspended iterator lends no other loop's read-ahead)
    with backend.weight_order(reads), backend.decode_spin():
        step(tokens, cache, None, logits)
        idle = np.ones(len(slots), bool)
        idle[decoding] = False
        cache.lengths[idle] = kept[idle]
        chosen = {}
        greedy = [s for s in decoding if slots[s].plain_greedy]
        if greedy:
            chosen.update(zip(greedy, ops.argmax(logits[greedy]).tolist()))
        for s in decoding:
            if s not in chosen:
                chosen[s] = slots[s].choose(logits[s:s + 1])
    elapsed = time.perf_counter() - t0
    done = []
    for s in decoding:
        slots[s].decode_s += elapsed
        if slots[s].add(chosen[s]):
            done.append(s)
    return done


def generate_many(model, prompts: Iterable, config: GenerationConfig, *, max_batch: int = 8,
                  prefill_chunk: int = 128, as_completed: bool = False, rng=None, step: Callable | None = None):
    """See :meth:`fastdecode.Model.generate_many`."""
    for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if isinstance(prompts, (str, dict)) or (isinstance(prompts, (list, tuple)) and prompts
                                            and isinstance(prompts[0], (int, np.integer))):
        raise TypeError("generate_many takes a list (or iterable) of prompts; for one prompt use generate()")
    row_seed(rng, 0)  # refuse a bad base seed before any work
    validate(config.merged(model.generation_defaults))

    def requests():
        for i, item in enumerate(prompts):
            if isinstance(item, Request):
                yield item
                continue
            try:
                request = prepare(model, item, i, config, rng)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"prompt {i}: {exc}") from None
            yield request

    completions = run(model, requests(), int(max_batch), int(prefill_chunk), step or default_step(model))
    if as_completed:
        return completions
    with backend.weight_order(model.weights.decode_order()):  # nothing runs between steps: hold it throughout
        results = dict(completions)
    return [results[i] for i in sorted(results)]
