"""Sampling, the readable way (it may sort): Hugging Face's order and rules.

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw

One row at a time; ``z`` is a row of logits ``[V]`` (float32 or float64),
``-inf`` where a token is filtered out. A filter keeps or drops whole
tokens, so each one is a boolean mask over the row:

- top-k keeps every token whose logit is >= the k-th largest (ties kept);
- top-p keeps token i iff the probability mass of the tokens ranked strictly
  above it is < p; rank = logit (that is, probability) descending, then id
  ascending, so the boundary token is kept and ties are deterministic;
- min-p keeps p_i >= min_p * p_max, tested on logits as
  ``z_i - max(z) >= log(min_p)`` (the same inequality, with no exp to round);
- the draw is inverse-CDF over the kept tokens in token-id order with a
  given uniform u in [0, 1).

Probabilities and masses are float64 (``exp`` of the float32 differences).
"""
import math

import numpy as np


def apply_repetition_penalty(x, prev, penalty):  # x: [V], prev: [T] ids -> [V]
    """Each distinct seen id once: logit < 0 -> logit * penalty, else logit / penalty."""
    out = x.copy()
    seen = np.unique(prev)
    s = x[seen]
    out[seen] = np.where(s < 0, s * x.dtype.type(penalty), s / x.dtype.type(penalty))
    return out


def apply_temperature(x, temperature):  # [V] -> [V]
    return x / x.dtype.type(temperature)


def shifted_exp(z):  # [V] -> [V] float64: exp(z - max), 1 at the max, 0 at -inf
    return np.exp((z - z.max()).astype(np.float64))


def top_k_mask(z, k):  # [V] -> bool [V]
    if k >= len(z):
        return np.ones(len(z), bool)
    kth = np.partition(z, len(z) - k)[len(z) - k]  # the k-th largest
    return z >= kth


def top_p_mask(z, p):  # [V] -> bool [V]
    """Masses stay unnormalized (exp(z - max), exactly 1 at the max), so equal
    logits give exact sums and both backends decide ties alike."""
    order = np.argsort(-z, kind="stable")  # logit descending, id ascending on ties
    mass = shifted_exp(z)[order]
    above = np.concatenate(([0.0], np.cumsum(mass)[:-1]))  # mass ranked strictly above
    keep = np.empty(len(z), bool)
    keep[order] = above < p * mass.sum()
    return keep


def min_p_mask(z, min_p):  # [V] -> bool [V]
    return (z - z.max()).astype(np.float64) >= math.log(min_p)


def greedy_mask(z):  # [V] -> bool [V]: only the first largest logit
    keep = np.zeros(len(z), bool)
    keep[np.argmax(z)] = True
    return keep


def scaled_logits(x, temperature=1.0, penalty=1.0, prev=None):  # [V] -> [V]
    """The row after the repetition penalty and temperature (0 counts as 1:
    greedy ranks the penalized logits)."""
    z = x
    if penalty != 1.0 and prev is not None and len(prev):
        z = apply_repetition_penalty(z, prev, penalty)
    if temperature not in (0.0, 1.0):
        z = apply_temperature(z, temperature)
    return z


def filtered_logits(z, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):  # scaled logits [V] -> [V]
    """Top-k, top-p, min-p in HF's order, filtered tokens at -inf: each filter
    sees the output of the one before, and is off at its neutral value
    (top_k 0, top_p 1, min_p 0). temperature 0 keeps only the argmax
    (greedy; lowest id wins a tie)."""
    neg_inf = z.dtype.type(-np.inf)
    if temperature == 0:
        return np.where(greedy_mask(z), z, neg_inf)
    if top_k:
        z = np.where(top_k_mask(z, top_k), z, neg_inf)
    if top_p < 1.0:
        z = np.where(top_p_mask(z, top_p), z, neg_inf)
    if min_p > 0.0:
        z = np.where(min_p_mask(z, min_p), z, neg_inf)
    return z


def probabilities(z):  # filtered logits [V] -> probabilities [V] float64, 0 where filtered
    e = shifted_exp(z)
    return e / e.sum()


def draw(probs, u):  # probs: [V] (any scale), u in [0, 1) -> token id
    """Inverse CDF in token-id order: the first token whose cumulative mass
    exceeds u * total. Rounding can leave u * total past the end; then the
    last token with mass wins."""
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(i, int(np.flatnonzero(probs)[-1]))


def row_problem(x, z):  # row x [V] and its scaled logits z [V] -> 0 or a negative code
    """What makes a row unsampleable: NaN (-1), +inf in the logits or made by
    the penalty or temperature (-2), nothing but -inf, given or made (-3)."""
    if np.isnan(x).any():
        return -1
    if np.isposinf(z).any():
        return -2
    if np.isneginf(z).all():
        return -3
    return 0


# ---------------------------------------------------------------------------
# One row, start to end: what the NumPy backend runs for each row
# ---------------------------------------------------------------------------

def process(x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0, prev=None, probs=False):
    """x: [V] -> (filtered logits [V], or probabilities [V] float64 with probs; 0),
    or (None, code < 0) for a row that cannot be sampled (see row_problem)."""
    z = scaled_logits(x, temperature, penalty, prev)
    code = row_problem(x, z)
    if code:
        return None, code
    f = filtered_logits(z, temperature, int(top_k), top_p, min_p)
    return (probabilities(f) if probs else f), 0


def sample(x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0, u=0.0, prev=None):  # [V] -> id
    """The token for uniform u, or a negative code for a row that cannot be
    sampled (the C kernel's convention)."""
    f, code = process(x, temperature, top_k, top_p, min_p, penalty, prev)
    return code if code else draw(shifted_exp(f), u)
