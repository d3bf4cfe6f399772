"""Prompt-lookup decoding: draft tokens by copying from the context, check them in one forward pass.

Hugging Face's ``prompt_lookup_num_tokens`` / ``max_matching_ngram_size``
(``PromptLookupCandidateGenerator``, after Saxena 2023): the last n tokens
of the context (prompt + tokens so far), n from ``max_matching_ngram_size``
down to 1, are looked up in the context; an earlier occurrence proposes the
(up to) k tokens that followed it. Where the n-gram occurs several times,
transformers takes the earliest (its code notes the longest match might be
better); here the occurrence whose preceding tokens match the context's
for longest wins, the earliest among equals, so a text being copied is
followed from where it really is (on bench/less_work.py's copying task,
73 instead of 94 verification steps for 400 tokens). Drafts only decide
how fast, never what is output. The last chosen token and
the k drafts go through the model as one chunk of k + 1 positions (one read
of the weights, as one decode step), and each position's logits choose a
token exactly as plain decoding would, with the drafts before it as
history: while the chosen token equals the draft, the next position is
valid too. So every step yields 1 to k + 1 tokens, the cache is cut back
to the agreeing prefix, and:

- greedy output is plain greedy's (up to the rounding of a k + 1 row chunk
  against a one-row step, as in transformers);
- sampled output has plain sampling's distribution: each token is a fresh
  draw from the model's distribution given the tokens before it (the draft
  is deterministic, so the speculative acceptance rule reduces to "keep the
  draw if it equals the draft"). For one prompt, each position draws its u
  in order, so the tokens equal plain sampling's with the same seed.

The adaptive rule (so free text is not slowed down): a row's draft length
grows by 2 after a fully accepted draft and shrinks by 1 otherwise (the
``"heuristic"`` schedule of transformers' assisted generation); after a
draft whose first token fails, the row stops drafting for 1, 3, 7, ... up
to 63 steps, until a draft is accepted again.
"""
from __future__ import annotations

import numpy as np

from .model.transformer import forward

DEFAULT_NGRAM = 2  # transformers' default max_matching_ngram_size
MAX_BACKOFF = 6  # at most 2**6 - 1 steps without drafting
MATCH_CAP = 64  # tokens of context compared to choose among several occurrences of the n-gram


def _positive(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def propose(context: np.ndarray, k: int, max_ngram: int, stop_ids=()) -> np.ndarray:  # [L] int64 -> [<= k] int64
    """Up to k tokens that followed an earlier occurrence of the context's
    last n-gram (n = max_ngram .. 1), cut before the first of ``stop_ids``
    (as transformers cuts at eos); empty when none matches. Of several
    occurrences, the one whose preceding tokens go on matching the
    context's longest (up to MATCH_CAP), then the earliest."""
    size = len(context)
    for n in range(min(max_ngram, size - 1), 0, -1):
        tail = context[size - n:]
        hit = np.ones(size - n, bool)  # windows starting at 0 .. size-n-1: each has a continuation
        for j in range(n):
            hit &= context[j:size - n + j] == tail[j]
        found = np.flatnonzero(hit)
        if found.size:
            start = int(found[np.argmax(_context_match(context, found, size - n))]) + n
            draft = context[start:start + k]
            cut = np.flatnonzero(np.isin(draft, list(stop_ids))) if stop_ids else draft[:0]
            return draft[:cut[0]] if cut.size else draft
    return context[:0]


def _context_match(context, found, at) -> np.ndarray:  # found: [m] window starts -> [m] matching tokens before
    """How many tokens before each window equal those before position ``at``."""
    length = np.zeros(found.size, np.int64)
    alive = np.ones(found.size, bool)
    for m in range(1, min(MATCH_CAP, at) + 1):
        if found.size == 1 or not alive.any():
            break
        pos = found - m
        alive &= (pos >= 0) & (context[np.maximum(pos, 0)] == context[at - m])
        length += alive
    return length


class PromptLookup:
    """Drafting state of a batch: each row's draft length and back-off."""

    def __init__(self, num_tokens, max_ngram, rows: int, stop_ids=()):
        self.k = _positive(num_tokens, "prompt_lookup_num_tokens")
        self.stop_ids = sorted(stop_ids)
        self.n = DEFAULT_NGRAM if max_ngram is None else _positive(max_ngram, "max_matching_ngram_size")
        self.budget = [self.k] * rows
        self.misses = [0] * rows
        self.wait = [0] * rows
        self.drafted = self.accepted = 0

    def counts(self) -> tuple[int, int]:
        return self.drafted, self.accepted

    def _drafts(self, prompts, seqs, max_new: int) -> list:
        drafts = []
        for b, (p, s) in enumerate(zip(prompts, seqs)):
            room = max_new - len(s.token_ids) - 1  # the token chosen after the drafts counts too
            if s.finish_reason is not None or room < 1 or self.wait[b] > 0:
                self.wait[b] = max(0, self.wait[b] - 1)
                drafts.append([])
                continue
            context = np.fromiter(p + s.token_ids, np.int64, len(p) + len(s.token_ids))
            drafts.append([int(t) for t in propose(context, min(self.budget[b], room), self.n, self.stop_ids)])
        return drafts

    def _learn(self, b: int, drafted: int, accepted: int):
        self.drafted += drafted
        self.accepted += accepted
        if not drafted:
            return
        self.budget[b] = min(self.k, self.budget[b] + 2) if accepted == drafted else max(1, self.budget[b] - 1)
        if accepted:
            self.misses[b] = 0
        else:
            self.misses[b] = min(self.misses[b] + 1, MAX_BACKOFF)
            self.wait[b] = 2 ** self.misses[b] - 1

    def step(self, model, cache, prompts, seqs, new, max_new: int, choose) -> list:
        """One verification step. new: each row's tokens added last (the last
        one is not in the cache yet). Returns each row's next tokens (1 to
        k + 1 of them); ``cache`` keeps only the agreeing positions."""
        drafts = self._drafts(prompts, seqs, max_new)
        # a finished row takes no position (it could outrun the cache: its neighbours may need more steps)
        rows = [[n[-1]] + d if s.finish_reason is None else [] for n, d, s in zip(new, drafts, seqs)]
        counts = np.array([len(r) for r in rows], np.int64)
        t = int(counts.max())
        tokens = np.zeros((len(rows), t), np.int64)
        for b, r in enumerate(rows):
            tokens[b, t - len(r):] = r  # left padding, as forward() expects
        start = cache.lengths.copy()
        logits = forward(model.weights, model.config, tokens, cache, counts=counts, all_logits=True)  # [B, T, V]
        out = [[] for _ in rows]
        live = np.ones(len(rows), bool)
        every = np.arange(len(rows))
        for i in range(t):  # position i of every row: row b's is at column t - counts[b] + i
            chosen = choose(np.ascontiguousarray(logits[every, np.minimum(t - counts + i, t - 1)]), out)
            for b in np.flatnonzero(live):
                out[b].append(int(chosen[b]))
                if i >= len(drafts[b]) or chosen[b] != drafts[b][i]:
                    live[b] = False
            if not live.any():
                break
        for b, d in enumerate(drafts):
            self._learn(b, len(d), len(out[b]) - 1)
        # the last token + the accepted drafts (a finished row: nothing)
        cache.lengths[:] = start + np.array([len(o) if c else 0 for o, c in zip(out, counts)], np.int64)
        return out
