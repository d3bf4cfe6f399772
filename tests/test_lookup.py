"""Prompt-lookup decoding: the drafts are transformers' (PromptLookupCandidateGenerator),
and the output is plain decoding's: greedy, sampled (one prompt, same seed),
penalized, batches of ragged rows, stops inside an accepted draft."""
import numpy as np
import pytest

import fastdecode
from fastdecode.lookup import propose
from fastdecode.model import Model

# the embedded model does not copy its input, but repeats itself: its own text then gives the drafts
COPY = "Return a list of"  # greedy: " (key, value) tuple.\n\nReturn a list of (name, value) tuple. ..."
FREE = "Déjà vu: café 東京 🙂"  # fewer repeats: most drafts fail
CARD = open(fastdecode.model.DEFAULT_MODEL_DIR + "/MODEL_CARD.md", encoding="utf-8").read()
RAGGED = [COPY, FREE, CARD[400:700] + CARD[400:520]]


@pytest.fixture(scope="module")
def model():
    return fastdecode.load("default", prefix_cache_mb=0)


def both(model, prompt, n=48, **kw):
    plain = model.generate(prompt, max_new_tokens=n, **kw)
    fast = model.generate(prompt, max_new_tokens=n, prompt_lookup_num_tokens=6, **kw)
    return plain, fast


def same(a, b):
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.finish_reason == b.finish_reason and a.stopped_by == b.stopped_by


def hf_draft(context, k, n, eos=None) -> list:
    torch = pytest.importorskip("torch", reason="compared with transformers' candidate generator")
    cg = pytest.importorskip("transformers.generation.candidate_generator", reason="compared with transformers")
    hf = cg.PromptLookupCandidateGenerator(
        eos_token_id=None if eos is None else torch.tensor([eos]), num_output_tokens=k,
        max_matching_ngram_size=n, max_length=10_000)
    ids, _ = hf.get_candidates(torch.tensor(np.asarray(context)[None]))
    return ids[0, len(context):].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_a_single_occurrence_drafts_as_transformers(seed):
    rng = np.random.default_rng(seed)
    body = rng.permutation(60)[:int(rng.integers(5, 60))]  # no token twice: one occurrence of any n-gram
    at = int(rng.integers(0, len(body)))
    context = np.concatenate([body, body[at:at + int(rng.integers(1, 4))]]).astype(np.int64)
    k, n = int(rng.integers(1, 8)), int(rng.integers(1, 4))
    eos = int(rng.choice(body)) if seed % 2 else None
    assert propose(context, k, n, () if eos is None else (eos,)).tolist() == hf_draft(context, k, n, eos)


@pytest.mark.parametrize("seed", range(6))
def test_drafts_follow_an_occurrence_transformers_would_match(seed):
    rng = np.random.default_rng(seed)
    context = rng.integers(0, 5, int(rng.integers(2, 60))).astype(np.int64)  # a small alphabet: many repeats
    k, n = int(rng.integers(1, 8)), int(rng.integers(1, 4))
    ours, theirs = propose(context, k, n).tolist(), hf_draft(context, k, n)
    assert bool(ours) == bool(theirs)
    if ours:  # the same n-gram size matched (n = that of the first non-empty HF search, HF's order)
        used = next(m for m in range(min(n, len(context) - 1), 0, -1)
                    if any((context[i:i + m] == context[-m:]).all() for i in range(len(context) - m)))
        starts = [i + used for i in range(len(context) - used) if (context[i:i + used] == context[-used:]).all()]
        assert any(context[s:s + len(ours)].tolist() == ours for s in starts)


def test_the_occurrence_with_the_longest_matching_context_wins():
    context = np.array([6, 3, 7, 5, 6, 3, 9, 8, 5, 6, 3], np.int64)  # (6, 3) at 0 and at 4; "5, 6, 3" only at 3
    assert hf_draft(context, 4, 2) == [7, 5, 6, 3]  # transformers: the earliest
    assert propose(context, 4, 2).tolist() == [9, 8, 5, 6]


def test_propose_without_a_match():
    assert propose(np.array([1, 2, 3], np.int64), 4, 2).tolist() == []
    assert propose(np.array([7], np.int64), 4, 2).tolist() == []
    assert propose(np.array([1, 2, 1], np.int64), 4, 2).tolist() == [2, 1]


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("prompt", [COPY, FREE], ids=["copying", "free"])
def test_greedy_equals_plain_greedy(model, prompt):
    plain, fast = both(model, prompt)
    same(plain, fast)
    if prompt is COPY:  # the drafts did the work: most tokens came from them
        assert fast.timing.accepted_draft_tokens > len(fast.token_ids) // 2


@pytest.mark.usefixtures("backend")
def test_batch_of_ragged_rows(model):
    plain = model.generate(RAGGED, max_new_tokens=40)
    fast = model.generate(RAGGED, max_new_tokens=40, prompt_lookup_num_tokens=5)
    for a, b in zip(plain, fast):
        same(a, b)
    assert fast[0].timing.accepted_draft_tokens > 0


def test_stream_pieces_equal_plain(model):
    a = list(model.stream(COPY, max_new_tokens=40))
    b = list(model.stream(COPY, max_new_tokens=40, prompt_lookup_num_tokens=6))
    assert a == b


@pytest.mark.parametrize("kw", [dict(do_sample=True, temperature=0.7, rng=3), dict(repetition_penalty=1.3),
                                dict(do_sample=True, top_k=5, top_p=0.8, rng=11, max_matching_ngram_size=3)])
def test_sampling_and_penalty_equal_plain(model, kw):
    plain, fast = both(model, COPY, **kw)
    same(plain, fast)


def test_stops_inside_an_accepted_draft(model):
    plain = model.generate(COPY, max_new_tokens=40)
    fast = model.generate(COPY, max_new_tokens=40, prompt_lookup_num_tokens=8)
    assert fast.timing.accepted_draft_tokens > 10
    at = 20  # a token well inside the copied stretch
    token = plain.token_ids[at]
    first = plain.token_ids.index(token)
    # as a stop id
    a, b = both(model, COPY, 40, stop=[token])
    same(a, b)
    assert len(b.token_ids) == first + 1 and b.finish_reason == "stop"
    # as the checkpoint's eos
    eos_model = Model(model.config, model.weights, model.tokenizer, {}, (token,), model.path)
    a, b = both(eos_model, COPY, 40)
    same(a, b)
    assert b.finish_reason == "eos" and len(b.token_ids) == first + 1
    # a stop string ending inside the copy
    text = plain.text
    stop = text[len(text) // 2: len(text) // 2 + 6]
    a, b = both(model, COPY, 40, stop=[stop])
    same(a, b)
    assert b.finish_reason == "stop" and b.stopped_by == stop


def test_max_new_tokens_is_kept(model):
    for n in (1, 2, 5, 13):
        a, b = both(model, COPY, n)
        same(a, b)
        assert len(b.token_ids) == n


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_bad_settings(model, bad):
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        model.generate(FREE, max_new_tokens=4, prompt_lookup_num_tokens=bad)
    with pytest.raises(ValueError, match="max_matching_ngram_size"):
        model.generate(FREE, max_new_tokens=4, prompt_lookup_num_tokens=3, max_matching_ngram_size=bad)
