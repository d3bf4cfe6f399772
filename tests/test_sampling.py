"""Sampling: Hugging Face's semantics, C against the NumPy reference, the
draw's statistics, edge cases and bad input.

- Kept-token sets equal transformers' own processors (RepetitionPenalty,
  Temperature, TopK, TopP, MinP in generate()'s order) on thousands of
  random rows without ties, both backends. HF works in float32, so rows
  where a top-p cumulative mass lies within HF_EPS of p, or a logit within
  HF_EPS of min-p's threshold, may differ legitimately: they are counted,
  and only there is a difference allowed.
- C and NumPy draw identical ids for identical u (hypothesis). Their
  masses differ by float32 rounding, so a difference is allowed only where
  u lies within U_EPS of a CDF boundary, or the kept sets differ at a top-p
  boundary within U_EPS (relative) of p; both are counted.
- Chi-square goodness of fit on 100,000 draws per filter and for all
  together, both backends, fixed seeds, against HF's float64 distribution.
"""
import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdecode as fd
from conftest import requires_c
from fastdecode.reference import sampling as ref

from scipy import stats as scipy_stats


def torch_and_processors():
    """(torch, transformers' logits processors), or skip the calling test: only
    the tests that compare with Hugging Face need them."""
    torch = pytest.importorskip("torch", reason="torch runs Hugging Face's processors, the reference here")
    lp = pytest.importorskip("transformers.generation.logits_process",
                             reason="transformers provides the processors to compare with")
    return torch, lp

HF_EPS = 1e-5  # float32 cumulative sums of a few hundred probabilities
U_EPS = 1e-6  # float32 exp (<= 2 ulp) and float32 block sums against float64
PARITY_COUNTS = {"examples": 0, "u within U_EPS of a CDF boundary": 0, "top-p mass within U_EPS of p": 0}


def scaled(x, temperature=1.0, penalty=None, prev=None):  # [V] float32 -> [V] float32
    z = x.copy()
    if penalty is not None:
        seen = np.unique(prev)
        z[seen] = np.where(z[seen] < 0, z[seen] * np.float32(penalty), z[seen] / np.float32(penalty))
    return z / np.float32(temperature) if temperature not in (0, 1) else z


# ---------------------------------------------------------------------------
# Hugging Face parity
# ---------------------------------------------------------------------------

def hf_processors(temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    """transformers' processors for these settings, in generate()'s order."""
    _, lp = torch_and_processors()
    procs = []
    if repetition_penalty is not None:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if temperature != 1.0:
        procs.append(lp.TemperatureLogitsWarper(float(temperature)))
    if top_k:
        procs.append(lp.TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(lp.TopPLogitsWarper(top_p))
    if min_p is not None:
        procs.append(lp.MinPLogitsWarper(min_p))
    return procs


def hf_kept(x, prev, **case):
    """bool [B, V]: what transformers' processors keep."""
    torch, _ = torch_and_processors()
    scores = torch.from_numpy(x.copy())
    for proc in hf_processors(**case):
        scores = proc(torch.from_numpy(prev), scores)
    return torch.isfinite(scores).numpy()


def near_threshold(z, top_k, top_p, min_p, eps):
    """Is a top-p cumulative mass or a min-p logit within eps of its threshold?"""
    z = z.astype(np.float64)
    if top_k:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    if top_p is not None:
        order = np.argsort(-z, kind="stable")
        prob = np.exp(z[order] - z.max())
        prob /= prob.sum()
        above = np.concatenate(([0.0], np.cumsum(prob)[:-1]))
        if np.min(np.abs(above - top_p)) < eps:
            return True
        keep = np.empty(len(z), bool)
        keep[order] = above < top_p
        z = np.where(keep, z, -np.inf)
    if min_p is not None and np.min(np.abs(z[np.isfinite(z)] - z.max() - math.log(min_p))) < eps:
        return True
    return False


HF_CASES = [
    dict(top_k=20),
    dict(temperature=0.7, top_p=0.9),
    dict(min_p=0.05),
    dict(temperature=1.5, top_k=50, top_p=0.5),
    dict(temperature=0.8, top_k=40, top_p=0.8, min_p=0.02, repetition_penalty=1.3),
    dict(temperature=1.2, top_p=0.95, min_p=0.1, repetition_penalty=0.8),
]


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_kept_sets_match_transformers(backend, case):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    rows, vocab = 1000, 256
    x = (rng.standard_normal((rows, vocab)) * rng.choice([1.0, 2.0, 4.0], (rows, 1))).astype(np.float32)
    for r in range(rows):  # no ties
        while len(np.unique(x[r])) < vocab:
            x[r] = (rng.standard_normal(vocab) * 2).astype(np.float32)
    prev = rng.integers(0, vocab, (rows, 12))
    kw = dict(case, prev_tokens=prev) if "repetition_penalty" in case else dict(case)
    ours = np.isfinite(fd.process_logits(x, **kw))
    theirs = hf_kept(x, prev, **case)
    differ = np.flatnonzero((ours != theirs).any(axis=1))
    ambiguous = 0
    for r in range(rows):
        z = scaled(x[r], case.get("temperature", 1.0), case.get("repetition_penalty"), prev[r])
        if near_threshold(z, case.get("top_k"), case.get("top_p"), case.get("min_p"), HF_EPS):
            ambiguous += 1
        else:
            assert r not in differ, f"row {r}: kept sets differ away from any threshold"
    print(f"{case}: {rows} rows, {ambiguous} within {HF_EPS} of a threshold, {len(differ)} differ there")
    assert ambiguous < rows // 20
    assert ours.sum() < ours.size  # something was filtered


# ---------------------------------------------------------------------------
# C against the NumPy reference, same u
# ---------------------------------------------------------------------------

def logits_rows(draw, rows, vocab):
    kind = draw(st.sampled_from(["normal", "ties", "masked", "constant", "wide"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((rows, vocab)) * draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    elif kind == "ties":
        x = rng.integers(-3, 3, (rows, vocab)).astype(np.float64)
    elif kind == "masked":
        x = rng.standard_normal((rows, vocab))
        x[rng.random((rows, vocab)) < 0.7] = -np.inf
        x[np.arange(rows), rng.integers(0, vocab, rows)] = rng.standard_normal(rows)
    elif kind == "constant":
        x = np.full((rows, vocab), draw(st.sampled_from([0.0, -7.5, 3e4])))
    else:
        x = rng.standard_normal((rows, vocab)) * 1e3 + rng.standard_normal((rows, 1)) * 1e6
    return x.astype(np.float32)


def per_row_or_scalar(draw, rows, values):
    if rows > 1 and draw(st.booleans()):
        return np.array([draw(values) for _ in range(rows)])
    return draw(values)


@st.composite
def sampling_problems(draw):
    rows, vocab = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 7, 16, 17, 33, 100, 257]))
    x = logits_rows(draw, rows, vocab)
    kw = dict(
        temperature=per_row_or_scalar(draw, rows, st.sampled_from([0.0, 0.3, 0.7, 1.0, 2.5]) | st.floats(0.05, 5)),
        top_k=per_row_or_scalar(draw, rows, st.sampled_from([0, 1, 2, 5, 50, 1000])),
        top_p=per_row_or_scalar(draw, rows, st.sampled_from([1.0, 0.9, 0.5, 0.1, 1e-6]) | st.floats(1e-6, 1.0)),
        min_p=per_row_or_scalar(draw, rows, st.sampled_from([0.0, 0.05, 0.5, 1.0]) | st.floats(0.0, 1.0)),
    )
    if draw(st.booleans()):
        kw["repetition_penalty"] = per_row_or_scalar(draw, rows, st.sampled_from([0.5, 1.0, 1.3, 2.0]))
        kw["prev_tokens"] = [list(draw(st.lists(st.integers(0, vocab - 1), max_size=8))) for _ in range(rows)]
    return x, kw, draw(st.integers(0, 2**32 - 1))


def row_settings(kw, r):
    return {k: (v[r] if isinstance(v, np.ndarray) else v) for k, v in kw.items() if k != "prev_tokens"}


def top_p_margin(x_row, settings, prev):
    """Relative distance of the reference's top-p cumulative masses to p (inf without top-p)."""
    p = settings.get("top_p", 1.0)
    if p >= 1.0 or settings["temperature"] == 0:
        return np.inf
    z = ref.scaled_logits(x_row, settings["temperature"], settings.get("repetition_penalty", 1.0), prev)
    if settings["top_k"]:
        z = np.where(ref.top_k_mask(z, settings["top_k"]), z, -np.inf)
    mass = np.sort(ref.shifted_exp(z))[::-1]
    above = np.concatenate(([0.0], np.cumsum(mass)[:-1]))
    return np.min(np.abs(above - p * mass.sum())) / mass.sum()


def u_margin(probs, u):
    """Distance of u to the nearest boundary of the CDF of probs (float64, normalized)."""
    cdf = np.cumsum(probs.astype(np.float64))
    return np.min(np.abs(cdf / cdf[-1] - u))


@settings(max_examples=400, deadline=None)
@given(problem=sampling_problems())
def check_c_matches_reference(problem):
    x, kw, seed = problem
    PARITY_COUNTS["examples"] += 1
    got = {}
    for name in ("numpy", "c"):
        with fd.use_backend(name):
            got[name] = (fd.sample(x, rng=seed, **kw), fd.process_logits(x, **kw))
    rows = x.shape[0]
    gen = np.random.default_rng(seed)
    u = np.array([gen.random()]) if rows == 1 else gen.random(rows)
    for r in range(rows):
        same_kept = np.array_equal(np.isfinite(got["numpy"][1][r]), np.isfinite(got["c"][1][r]))
        prev = kw["prev_tokens"][r] if "prev_tokens" in kw else None
        if not same_kept:
            assert top_p_margin(x[r], row_settings(kw, r), prev) < U_EPS, f"row {r}: kept sets differ"
            PARITY_COUNTS["top-p mass within U_EPS of p"] += 1
            continue
        np.testing.assert_array_equal(got["numpy"][1][r], got["c"][1][r])  # the kept logits themselves
        if got["numpy"][0][r] != got["c"][0][r]:
            probs = ref.shifted_exp(got["numpy"][1][r])
            assert u_margin(probs, u[r]) < U_EPS, f"row {r}: ids differ away from a CDF boundary"
            PARITY_COUNTS["u within U_EPS of a CDF boundary"] += 1


@requires_c
def test_c_matches_reference_for_same_u():
    check_c_matches_reference()
    print("C vs NumPy:", PARITY_COUNTS)
    skipped = PARITY_COUNTS["u within U_EPS of a CDF boundary"] + PARITY_COUNTS["top-p mass within U_EPS of p"]
    assert PARITY_COUNTS["examples"] >= 100
    assert skipped <= PARITY_COUNTS["examples"] // 50


def test_u_is_drawn_per_row_in_order():
    """One u per row from the Generator, so a seed gives the reference's u."""
    x = np.zeros((3, 1000), np.float32)
    ids = fd.sample(x, rng=7)
    np.testing.assert_array_equal(ids, np.floor(np.random.default_rng(7).random(3) * 1000).astype(np.int64))
    assert fd.sample(x[0], rng=7) == int(np.random.default_rng(7).random() * 1000)


# ---------------------------------------------------------------------------
# The draw's statistics
# ---------------------------------------------------------------------------

CHI_LOGITS = np.linspace(-4.0, 3.0, 40).astype(np.float32) + np.float32(0.05) * np.sin(np.arange(40)).astype(np.float32)
CHI_CASES = [
    dict(temperature=0.9),
    dict(top_k=12),
    dict(top_p=0.8),
    dict(min_p=0.1),
    dict(temperature=0.7, top_k=25, top_p=0.9, min_p=0.02, repetition_penalty=1.5),
]
DRAWS = 100_000


def hf_distribution(x, prev, **case):
    """float64 probabilities after transformers' processors."""
    torch, _ = torch_and_processors()
    scores = torch.from_numpy(x.astype(np.float64))[None]
    for proc in hf_processors(**case):
        scores = proc(torch.from_numpy(prev)[None], scores)
    return torch.softmax(scores, -1)[0].numpy()


def _softmax64(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def oracle_distribution(x, prev, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    """float64 probabilities after Hugging Face's processors, written from their
    definitions with sorts (no torch; checked against transformers below)."""
    z = x.astype(np.float64)
    if repetition_penalty is not None:
        seen = np.unique(prev)
        z[seen] = np.where(z[seen] < 0, z[seen] * repetition_penalty, z[seen] / repetition_penalty)
    z = z / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    if top_p is not None:
        p = _softmax64(z)
        order = np.lexsort((np.arange(len(z)), -p))  # probability descending, id ascending
        above = np.cumsum(p[order]) - p[order]
        keep = np.zeros(len(z), bool)
        keep[order] = above < top_p
        z = np.where(keep, z, -np.inf)
    if min_p is not None:
        p = _softmax64(z)
        z = np.where(p >= min_p * p.max(), z, -np.inf)
    return _softmax64(z)


CHI_PREV = np.array([39, 38, 38, 10, 5])


@pytest.mark.parametrize("case", CHI_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_oracle_distribution_equals_transformers(case):
    np.testing.assert_allclose(oracle_distribution(CHI_LOGITS, CHI_PREV, **case),
                               hf_distribution(CHI_LOGITS, CHI_PREV, **case), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("case", CHI_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_draws_follow_the_filtered_distribution(backend, case):
    prev = CHI_PREV
    expected = oracle_distribution(CHI_LOGITS, prev, **case)
    filters = {"top_k", "top_p", "min_p"} & set(case)
    assert (5 <= np.count_nonzero(expected) < len(CHI_LOGITS)) if filters else np.all(expected > 0)
    kw = dict(case, prev_tokens=np.tile(prev, (DRAWS, 1))) if "repetition_penalty" in case else case
    ids = fd.sample(np.tile(CHI_LOGITS, (DRAWS, 1)), rng=2024, **kw)
    counts = np.bincount(ids, minlength=len(CHI_LOGITS))
    kept = expected > 0
    assert counts[~kept].sum() == 0, "a filtered token was drawn"
    big = expected * DRAWS >= 5  # pool the bins too small for the chi-square approximation
    obs = np.append(counts[big], counts[kept & ~big].sum())
    exp = np.append(expected[big], expected[kept & ~big].sum()) * DRAWS
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p_value = scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
    assert p_value > 1e-3, f"chi-square p = {p_value:.2g}"


# ---------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [1, 7, 15, 16, 17, 31, 33, 1000, 1025, 50257])
def test_every_simd_level_matches_reference(simd, vocab):
    rng = np.random.default_rng(vocab)
    x = (rng.standard_normal((3, vocab)) * 3).astype(np.float32)
    x[1, ::3] = -np.inf
    x[1, 0] = 0.5
    x[2] = np.round(x[2])  # ties
    for kw in [dict(temperature=0.8), dict(top_k=5), dict(top_p=0.7), dict(min_p=0.2),
               dict(temperature=0.6, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                    prev_tokens=[[0, vocab - 1], [], [vocab // 2] * 3])]:
        for probs in (False, True):
            c = fd.process_logits(x, return_probs=probs, **kw)
            with fd.use_backend("numpy"):
                r = fd.process_logits(x, return_probs=probs, **kw)
            np.testing.assert_array_equal(np.isfinite(c) & (c != 0), np.isfinite(r) & (r != 0))
            np.testing.assert_allclose(c, r, rtol=2e-6, atol=1e-7)
        with fd.use_backend("numpy"):
            expected = fd.sample(x, rng=3, **kw)
        np.testing.assert_array_equal(fd.sample(x, rng=3, **kw), expected)
    np.testing.assert_array_equal(fd.argmax(x), np.argmax(x, axis=1))


@requires_c
@pytest.mark.parametrize("kw", [dict(top_k=50), dict(top_k=1000), dict(top_k=100_000), dict(top_p=0.9),
                                dict(top_p=0.999), dict(top_k=3000, top_p=0.5), dict(min_p=0.01),
                                dict(temperature=3.0, top_p=0.95, min_p=0.001)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_large_vocab_selection_paths(kw):
    """V = 151936 takes the paths small rows never reach: histogram rounds
    in the top-k and top-p selections, the group-maxima bounds, flat rows
    where most of the vocabulary is a candidate, ties by the thousand."""
    rng = np.random.default_rng(len(str(kw)))
    vocab = 151936
    x = np.stack([rng.standard_normal(vocab) * 4, rng.standard_normal(vocab) * 0.5,
                  np.round(rng.standard_normal(vocab) * 2), rng.standard_normal(vocab)]).astype(np.float32)
    x[3, rng.random(vocab) < 0.5] = -np.inf
    got = fd.process_logits(x, **kw)
    ids = fd.sample(x, rng=9, **kw)
    with fd.use_backend("numpy"):
        want = fd.process_logits(x, **kw)
        want_ids = fd.sample(x, rng=9, **kw)
    if "top_p" in kw:
        # float32 masses (C, each SIMD level's exp) against float64 (NumPy):
        # a token may flip only where the mass ranked above it is within
        # 1e-5 of top_p, the documented boundary epsilon
        flips = np.isfinite(got) != np.isfinite(want)
        for r, i in zip(*np.nonzero(flips)):
            assert abs(_mass_above(want_probs_row(x[r], kw), i) - kw["top_p"]) < 1e-5, (r, i)
        got, want = np.where(flips, -np.inf, got), np.where(flips, -np.inf, want)
        same_set = ~flips.any(axis=1)
    else:
        same_set = np.ones(len(x), bool)
    np.testing.assert_array_equal(got, want)
    # the draw may differ only in a row whose kept set differs at the top-p boundary
    np.testing.assert_array_equal(ids[same_set], want_ids[same_set])


def want_probs_row(row, kw):
    """float64 probabilities after temperature, top-k and min-p: what top-p ranks."""
    z = row.astype(np.float64) / kw.get("temperature", 1.0)
    if kw.get("top_k"):
        z = np.where(z >= np.sort(z)[-kw["top_k"]], z, -np.inf)
    p = np.exp(z - z.max())
    return p / p.sum()


def _mass_above(p, i):
    """Probability mass of the tokens ranked strictly above token i (prob desc, id asc)."""
    return p[(p > p[i]) | ((p == p[i]) & (np.arange(p.size) < i))].sum()


def test_top_k_keeps_ties(backend):
    x = np.array([1.0, 3.0, 2.0, 2.0, 2.0, 0.0], np.float32)
    kept = np.isfinite(fd.process_logits(x, top_k=2))
    np.testing.assert_array_equal(kept, [False, True, True, True, True, False])


def test_top_p_keeps_the_boundary_token_and_breaks_ties_by_id(backend):
    x = np.log(np.array([0.1, 0.4, 0.2, 0.2, 0.1], np.float64)).astype(np.float32)
    # ranked: 1 (0.4), 2 (0.2), 3 (0.2), 0 (0.1), 4 (0.1); mass above: 0, .4, .6, .8, .9
    np.testing.assert_array_equal(np.isfinite(fd.process_logits(x, top_p=0.5)), [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(np.isfinite(fd.process_logits(x, top_p=0.7)), [0, 1, 1, 1, 0])
    eq = np.zeros(8, np.float32)  # eight equal tokens: ids 0..3 carry the first half
    np.testing.assert_array_equal(np.isfinite(fd.process_logits(eq, top_p=0.5)), [1] * 4 + [0] * 4)
    np.testing.assert_array_equal(np.isfinite(fd.process_logits(eq, top_p=0.5001)), [1] * 5 + [0] * 3)


def test_single_survivor(backend, rng):
    x = (rng.standard_normal((4, 333)) * 2).astype(np.float32)
    best = np.argmax(x, axis=1)
    for kw in [dict(top_k=1), dict(top_p=1e-9), dict(min_p=1.0), dict(temperature=0), dict(do_sample=False)]:
        np.testing.assert_array_equal(fd.sample(x, rng=1, **kw), best)
    probs = fd.process_logits(x, top_p=1e-9, return_probs=True)
    np.testing.assert_array_equal(probs, np.eye(333, dtype=np.float32)[best])


def test_filters_off_at_their_neutral_values(backend, rng):
    x = (rng.standard_normal((2, 100)) * 2).astype(np.float32)
    plain = fd.process_logits(x)
    np.testing.assert_array_equal(plain, x)
    for kw in [dict(top_k=0), dict(top_k=100), dict(top_k=10**12), dict(top_p=1.0), dict(min_p=0.0),
               dict(repetition_penalty=1.0, prev_tokens=[[1, 2], [3]]), dict(top_k=None, top_p=None, min_p=None)]:
        np.testing.assert_array_equal(fd.process_logits(x, **kw), plain)
    np.testing.assert_array_equal(fd.sample(x, rng=5), fd.sample(x, rng=5, top_k=100, top_p=1.0, min_p=0.0))


def test_greedy_lowest_id_wins_a_tie(backend):
    x = np.array([[0.0, 2.0, 1.0, 2.0], [-np.inf, -1.0, -1.0, -np.inf]], np.float32)
    np.testing.assert_array_equal(fd.argmax(x), [1, 1])
    np.testing.assert_array_equal(fd.sample(x, temperature=0), [1, 1])
    np.testing.assert_array_equal(fd.sample(x, do_sample=False, top_k=1, temperature=0.5), [1, 1])
    assert fd.argmax(x[0]) == 1 and isinstance(fd.argmax(x[0]), int)
    np.testing.assert_array_equal(fd.process_logits(x, temperature=0), [[-np.inf, 2, -np.inf, -np.inf],
                                                                         [-np.inf, -1, -np.inf, -np.inf]])


def test_masked_tokens_never_drawn(backend, rng):
    x = rng.standard_normal((2000, 50)).astype(np.float32)
    x[:, ::2] = -np.inf
    ids = fd.sample(x, rng=11)
    assert np.all(ids % 2 == 1)


def test_repetition_penalty_semantics(backend):
    x = np.array([[2.0, -2.0, 1.0, -1.0, 0.0], [2.0, -2.0, 1.0, -1.0, 0.0]], np.float32)
    prev = [[0, 1, 1, 1, 4], [2]]
    out = fd.apply_repetition_penalty(x, prev, 2.0)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 1.0, -1.0, 0.0], [2.0, -2.0, 0.5, -1.0, 0.0]])
    np.testing.assert_array_equal(fd.apply_repetition_penalty(x, prev, np.array([2.0, 4.0]))[1], [2, -2, 0.25, -1, 0])
    np.testing.assert_array_equal(fd.apply_repetition_penalty(x[0], [1, 1], 2.0), [2.0, -4.0, 1.0, -1.0, 0.0])
    y = x.copy()
    assert fd.apply_repetition_penalty(y, prev, 2.0, out=y) is y  # in place: still once per id
    np.testing.assert_array_equal(y, out)
    np.testing.assert_array_equal(fd.apply_repetition_penalty(x, np.array([[0, 1], [2, 2]]), 2.0)[0],
                                  [1.0, -4.0, 1.0, -1.0, 0.0])
    # and in the sampler: penalty first, so the penalized argmax is greedy's pick
    assert fd.sample(x[0], temperature=0, repetition_penalty=3.0, prev_tokens=[0]) == 2


def test_repetition_penalty_equals_transformers(backend):
    torch, lp = torch_and_processors()
    x = np.array([[2.0, -2.0, 1.0, -1.0, 0.0], [2.0, -2.0, 1.0, -1.0, 0.0]], np.float32)
    out = fd.apply_repetition_penalty(x, [[0, 1, 1, 1, 4], [2]], 2.0)
    hf = lp.RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[0, 1, 1, 1, 4], [2, 2, 2, 2, 2]]), torch.from_numpy(x))
    np.testing.assert_array_equal(out, hf.numpy())


def test_per_row_settings_equal_row_by_row_calls(backend, rng):
    x = (rng.standard_normal((4, 300)) * 3).astype(np.float32)
    kw = dict(temperature=np.array([0.5, 1.0, 0.0, 2.0]), top_k=np.array([0, 10, 5, 1]),
              top_p=np.array([0.9, 1.0, 0.5, 0.3]), min_p=np.array([0.0, 0.1, 0.0, 0.5]),
              repetition_penalty=np.array([1.2, 1.0, 1.0, 0.7]), prev_tokens=[[1, 2], [], [3], [299]])
    together = fd.process_logits(x, return_probs=True, **kw)
    for r in range(4):
        one = {k: (v[r] if isinstance(v, np.ndarray) else v[r]) for k, v in kw.items()}
        one["prev_tokens"] = kw["prev_tokens"][r]
        np.testing.assert_array_equal(together[r], fd.process_logits(x[r], return_probs=True, **one))


def test_layouts_dtypes_and_out(backend, rng):
    x = (rng.standard_normal((3, 200)) * 2).astype(np.float32)
    kw = dict(temperature=0.9, top_k=30, top_p=0.9)
    ref_ids = fd.sample(x, rng=4, **kw)
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    np.testing.assert_array_equal(fd.sample(strided, rng=4, **kw), ref_ids)
    np.testing.assert_array_equal(fd.sample(np.asfortranarray(x), rng=4, **kw), ref_ids)
    np.testing.assert_array_equal(fd.sample(x.astype(np.float64), rng=4, **kw), ref_ids)
    ids = fd.sample(x, rng=4, **kw)
    assert ids.dtype == np.int64 and ids.shape == (3,)
    assert isinstance(fd.sample(x[0], rng=4, **kw), int)
    expected = fd.process_logits(x, **kw)
    out = np.empty_like(x)
    assert fd.process_logits(x, out=out, **kw) is out
    np.testing.assert_array_equal(out, expected)
    out_strided = np.empty((3, 400), np.float32)[:, ::2]
    np.testing.assert_array_equal(fd.process_logits(x, out=out_strided, **kw), expected)
    assert fd.process_logits(x.astype(np.float64), **kw).dtype == np.float64
    assert fd.sample(np.empty((0, 10), np.float32)).shape == (0,)


def test_rng_forms(backend):
    x = np.zeros(1000, np.float32)
    assert fd.sample(x, rng=3) == fd.sample(x, rng=3)
    assert fd.sample(x, rng=np.random.default_rng(3)) == fd.sample(x, rng=3)
    gen = np.random.default_rng(0)
    draws = {fd.sample(x, rng=gen) for _ in range(20)}
    assert len(draws) > 10  # a Generator advances
    assert 0 <= fd.sample(x) < 1000


EXTREMES = [0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 3e38, -3e38, 1e30, -1e30, -np.inf]


@requires_c
@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=st.integers(1, 3), vocab=st.integers(1, 70),
       temperature=st.sampled_from([0.0, 1e-30, 1e-3, 0.5, 1.0, 7.0, 3e38]),
       top_k=st.sampled_from([None, 1, 3, 69]), top_p=st.sampled_from([None, 1e-12, 0.5, 0.999999, 1.0]),
       min_p=st.sampled_from([None, 0.0, 1e-30, 0.5, 1.0]), penalty=st.sampled_from([None, 1e-20, 0.5, 3.0, 1e20]))
def test_backends_agree_on_extreme_values(data, rows, vocab, temperature, top_k, top_p, min_p, penalty):
    """Overflow by the temperature or the penalty, denormals, signed zeros:
    both backends keep the same tokens, or raise the same error."""
    x = np.array(data.draw(st.lists(st.sampled_from(EXTREMES), min_size=rows * vocab, max_size=rows * vocab)),
                 np.float32).reshape(rows, vocab)
    prev = [data.draw(st.lists(st.integers(0, vocab - 1), max_size=5)) for _ in range(rows)]
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=penalty,
              prev_tokens=prev)
    results = {}
    for backend in ("numpy", "c"):
        with fd.use_backend(backend):
            try:
                results[backend] = fd.process_logits(x, **kw)
            except ValueError as exc:
                results[backend] = str(exc)
    a, b = results["numpy"], results["c"]
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

GOOD = np.zeros((2, 10), np.float32)


@pytest.mark.parametrize("call, error, words", [
    (lambda: fd.sample(np.array([[0.0, np.nan]], np.float32)), ValueError, "NaN"),
    (lambda: fd.sample(np.array([[0.0, np.inf]], np.float32)), ValueError, "+inf"),
    (lambda: fd.sample(np.array([[0.0, 1.0], [-np.inf, -np.inf]], np.float32)), ValueError, "row 1 is all -inf"),
    (lambda: fd.argmax(np.array([np.nan, 1.0], np.float32)), ValueError, "NaN"),
    (lambda: fd.argmax(np.full(3, -np.inf, np.float32)), ValueError, "all -inf"),
    (lambda: fd.process_logits(np.array([1.0, np.nan])), ValueError, "NaN"),
    (lambda: fd.sample(np.array([3e38, 0.0], np.float32), temperature=0.5), ValueError, "temperature"),
    (lambda: fd.sample(GOOD, temperature=-1.0), ValueError, "temperature"),
    (lambda: fd.sample(GOOD, temperature=np.nan), ValueError, "temperature"),
    (lambda: fd.sample(GOOD, temperature=1e-39), ValueError, "temperature"),
    (lambda: fd.sample(GOOD, temperature=0.0, do_sample=True), ValueError, "do_sample"),
    (lambda: fd.sample(GOOD, temperature=np.array([1.0, 0.0]), do_sample=True), ValueError, "temperature"),
    (lambda: fd.sample(GOOD, top_p=0.0), ValueError, "top_p"),
    (lambda: fd.sample(GOOD, top_p=1.5), ValueError, "top_p"),
    (lambda: fd.sample(GOOD, top_p=np.array([0.5, np.nan])), ValueError, "top_p"),
    (lambda: fd.sample(GOOD, min_p=-0.1), ValueError, "min_p"),
    (lambda: fd.sample(GOOD, min_p=1.1), ValueError, "min_p"),
    (lambda: fd.sample(GOOD, top_k=-1), ValueError, "top_k"),
    (lambda: fd.sample(GOOD, top_k=2.5), TypeError, "top_k"),
    (lambda: fd.sample(GOOD, top_k=np.array([1.0, 2.0])), TypeError, "top_k"),
    (lambda: fd.sample(GOOD, top_k=[1, 2, 3]), ValueError, "top_k"),
    (lambda: fd.sample(GOOD, temperature="hot"), TypeError, "temperature"),
    (lambda: fd.sample(GOOD, do_sample="yes"), TypeError, "do_sample"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2), ValueError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=0.0, prev_tokens=[[1], [2]]), ValueError, "repetition_penalty"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=[[1], [10]]), ValueError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=[[1], [-1]]), ValueError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=[[1]]), ValueError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=np.zeros((3, 2), int)), ValueError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=[[1.5], [2]]), TypeError, "prev_tokens"),
    (lambda: fd.sample(GOOD, repetition_penalty=1.2, prev_tokens=np.array([1, 2])), ValueError, "prev_tokens"),
    (lambda: fd.apply_repetition_penalty(GOOD, [[1], [2]], -2.0), ValueError, "penalty"),
    (lambda: fd.sample(GOOD.astype(np.int32)), TypeError, "logits"),
    (lambda: fd.sample(np.zeros((2, 0), np.float32)), ValueError, "logits"),
    (lambda: fd.sample(np.zeros((2, 2, 2), np.float32)), ValueError, "logits"),
    (lambda: fd.sample(GOOD, rng="seed"), TypeError, "rng"),
    (lambda: fd.process_logits(GOOD, out=np.empty((2, 9), np.float32)), ValueError, "out"),
])
def test_bad_input(backend, call, error, words):
    with pytest.raises(error, match=None) as info:
        call()
    assert words in str(info.value)
