"""Prefix reuse across generate() calls: a model's LRU cache of KV caches, bounded in bytes.

After a one-prompt ``generate()``/``stream()``, its KV cache (prompt and
generated tokens, as far as they were fed) is kept here. A later prompt
that shares a prefix with a kept one (the same system prompt, few-shot
examples, a document asked another question) starts from a copy of that
prefix's keys and values and prefills only the rest, as llama.cpp's
``cache_prompt`` does. The tokens are those of a cold run; the arithmetic
differs only in how the prompt is split into prefill chunks.

Bounded by ``max_bytes`` (``fd.load(..., prefix_cache_mb=...)``, default
:data:`DEFAULT_MB`; 0 turns it off), least recently used out first. An
entry whose ids are a prefix of a newer one's is dropped as redundant.
Entries are never written after they are stored (a taker copies), so one
lock around the index makes the cache safe to share between threads.
"""
from __future__ import annotations

import collections
import itertools
import threading

import numpy as np

from .model.transformer import KVCache

DEFAULT_MB = 256


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:  # a, b: [n] int64 -> length of their common prefix
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def copy_prefix(config, source: KVCache, n: int, need: int) -> KVCache:
    """A fresh one-row cache of ``need`` positions holding ``source``'s first n."""
    cache = KVCache(config, 1, need)
    cache.k[:, :, :, :n] = source.k[:, :, :, :n]
    cache.v[:, :, :, :n] = source.v[:, :, :, :n]
    cache.lengths[:] = n
    return cache


class PrefixCache:
    """``take(ids, need)`` and ``put(ids, cache)``: the cache store protocol of
    :func:`fastdecode.generation.steps`. ``max_bytes``: the bound (K and V
    of every entry, as allocated)."""

    def __init__(self, config, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"the prefix cache size must be a non-negative number of bytes; got {max_bytes!r}")
        self.config = config
        self.max_bytes = int(max_bytes)
        self._entries: collections.OrderedDict = collections.OrderedDict()  # key -> (ids [n] int64, KVCache)
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self):
        return len(self._entries)

    def clear(self):
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def take(self, ids, need: int) -> tuple[KVCache, int]:
        """A cache for a run of ``need`` positions whose prompt is ``ids``,
        holding the longest cached prefix of ``ids`` (at most all but the
        last id: the run must compute the last position's logits)."""
        ids = np.asarray(ids, np.int64)
        best, source = 0, None
        with self._lock:
            for key, (kept, cache) in self._entries.items():
                n = min(common_prefix(kept, ids), len(ids) - 1)
                if n > best:
                    best, source, hit = n, cache, key
            if source is not None:
                self._entries.move_to_end(hit)
            self.hits += source is not None
            self.misses += source is None
        if source is None:
            return KVCache(self.config, 1, need), 0
        return copy_prefix(self.config, source, best, need), best  # outside the lock: entries are never written

    def put(self, ids, cache: KVCache):
        """Keep ``cache`` (now owned by this store) as the KV of ``ids``' first
        ``cache.lengths[0]`` tokens."""
        n = min(int(cache.lengths[0]), len(ids))
        size = cache.k.nbytes + cache.v.nbytes
        if n < 1 or size > self.max_bytes:
            return
        ids = np.asarray(ids[:n], np.int64)
        with self._lock:
            for key, (kept, _) in list(self._entries.items()):
                shared = common_prefix(kept, ids)
                if shared == len(ids):  # already covered by a longer (or equal) entry
                    self._entries.move_to_end(key)
                    return
                if shared == len(kept):  # the new entry covers this one
                    self._drop(key)
            while self._entries and self.bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[next(self._keys)] = (ids, cache)
            self.bytes += size

    def _drop(self, key):
        _, cache = self._entries.pop(key)
        self.bytes -= cache.k.nbytes + cache.v.nbytes


def make(mb):
    """config -> a PrefixCache of ``mb`` MB (None: DEFAULT_MB), or None for 0."""
    if mb is None:
        mb = DEFAULT_MB
    if isinstance(mb, bool) or not isinstance(mb, (int, float, np.integer, np.floating)) or not mb >= 0:
        raise ValueError(f"prefix_cache_mb must be a number >= 0 (0 turns the cache off); got {mb!r}")
    size = int(mb * 2**20)
    return lambda config: PrefixCache(config, size) if size > 0 else None
