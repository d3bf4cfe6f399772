"""generate() and stream(): stopping, streaming text, batches of unequal
prompts, sampling under both backends, timing, bad settings."""
import numpy as np
import pytest

import fastdecode
from fastdecode import GenerationConfig
from fastdecode.model import ContextOverflowError
from model_checkpoints import checkpoint, prompt_ids

TEXT = "Déjà vu: café 東京 🙂"


@pytest.fixture(scope="module")
def model():
    return fastdecode.load(checkpoint("llama-gqa-tied"))


@pytest.fixture(scope="module")
def gpt2():
    return fastdecode.load(checkpoint("gpt2"))


def continuation(model, prompt_ids, new_ids):
    """What the text of new_ids should be: the decode of the whole sequence, less the prompt's."""
    tok = model.tokenizer
    return tok.decode(prompt_ids + new_ids)[len(tok.decode(prompt_ids)):]


def greedy(model, prompt, n=24, **kw):
    return model.generate(prompt, max_new_tokens=n, ignore_eos=True, **kw)


# ---------------------------------------------------------------------------
# Results, text and streaming
# ---------------------------------------------------------------------------

def test_result_text_and_timing(model):
    out = greedy(model, TEXT)
    assert out.prompt_ids == model.encode(TEXT)
    assert len(out.token_ids) == 24 and out.finish_reason == "length" and out.stopped_by is None
    assert out.text == continuation(model, out.prompt_ids, out.token_ids)
    t = out.timing
    assert t.prompt_tokens == len(out.prompt_ids) and t.generated_tokens == 24
    assert t.prefill_s > 0 and t.decode_s > 0
    assert np.isfinite(t.prompt_tokens_per_s) and np.isfinite(t.generated_tokens_per_s)
    assert t.total_s == pytest.approx(t.prefill_s + t.decode_s)


@pytest.mark.parametrize("fixture", ["model", "gpt2"])
def test_stream_pieces_join_to_the_text(fixture, request):
    m = request.getfixturevalue(fixture)
    for prompt in [TEXT, "🙂", prompt_ids(5)]:
        pieces = list(m.stream(prompt, max_new_tokens=40, ignore_eos=True))
        out = greedy(m, prompt, 40)
        assert [p.id for p in pieces] == out.token_ids
        assert "".join(p.text for p in pieces) == out.text


def test_stream_never_splits_a_character(model):
    """Prompt-free stream of the ids of a text whose characters span several
    byte-level tokens: no piece holds U+FFFD, and they join to the text."""
    ids = model.encode(TEXT)
    assert any("\ufffd" in model.decode([i]) for i in ids), "the test text should split characters over tokens"
    stream = model.tokenizer.stream()
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some tokens completed no character


def test_stream_returns_the_result(model):
    gen = model.stream(TEXT, max_new_tokens=5, ignore_eos=True)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            result = done.value
            break
    assert result.token_ids == greedy(model, TEXT, 5).token_ids


def test_stream_takes_one_prompt(model):
    with pytest.raises(ValueError, match="one prompt"):
        list(model.stream([TEXT, TEXT], max_new_tokens=2))


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------

def test_eos_stops_and_is_kept_in_ids_not_text(model, monkeypatch):
    full = greedy(model, TEXT, 20)
    eos = full.token_ids[6]
    monkeypatch.setattr(model, "eos_token_ids", (eos,))
    out = model.generate(TEXT, max_new_tokens=20)
    first = full.token_ids.index(eos)
    assert out.token_ids == full.token_ids[:first + 1]
    assert out.finish_reason == "eos" and out.stopped_by == eos
    assert out.text == continuation(model, out.prompt_ids, out.token_ids[:-1])
    assert greedy(model, TEXT, 20).token_ids == full.token_ids  # ignore_eos


def test_stop_token_ids(model):
    full = greedy(model, TEXT, 20)
    stop = full.token_ids[4]
    out = greedy(model, TEXT, 20, stop=[stop])
    assert out.token_ids == full.token_ids[:full.token_ids.index(stop) + 1]
    assert out.finish_reason == "stop" and out.stopped_by == stop
    assert out.text == continuation(model, out.prompt_ids, out.token_ids[:-1])  # held-back bytes flushed too


def test_stop_strings_end_the_text_before_them(model):
    full = greedy(model, TEXT, 30)
    text = full.text
    start = next(i for i in range(8, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    cut = text.find(stop)
    for kw in (dict(stop=stop), dict(stop=["never in the text", stop])):
        out = greedy(model, TEXT, 30, **kw)
        assert out.text == text[:cut]
        assert out.finish_reason == "stop" and out.stopped_by == stop
        assert out.token_ids == full.token_ids[:len(out.token_ids)]
        assert continuation(model, out.prompt_ids, out.token_ids).startswith(text[:cut] + stop)
        pieces = list(model.stream(TEXT, max_new_tokens=30, ignore_eos=True, **kw))
        assert "".join(p.text for p in pieces) == out.text  # a partial stop string is held back, then dropped


def test_stop_string_that_never_comes(model):
    out = greedy(model, TEXT, 12, stop="\x00never\x00")
    assert out.finish_reason == "length" and out.token_ids == greedy(model, TEXT, 12).token_ids
    pieces = list(model.stream(TEXT, max_new_tokens=12, ignore_eos=True, stop="\x00never\x00"))
    assert "".join(p.text for p in pieces) == out.text


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gpt2", "llama3-untied"])
def test_batch_of_unequal_prompts_equals_each_alone(kind, backend):
    model = fastdecode.load(checkpoint(kind))
    prompts = [prompt_ids(3, seed=1), prompt_ids(11, seed=2), prompt_ids(7, seed=3)]
    batch = greedy(model, prompts, 16)
    assert isinstance(batch, list) and len(batch) == 3
    for prompt, out in zip(prompts, batch):
        alone = greedy(model, prompt, 16)
        assert out.token_ids == alone.token_ids and out.prompt_ids == prompt
    # and the logits themselves, prefill then two decode steps
    width = max(map(len, prompts))
    padded = np.array([[0] * (width - len(p)) + p for p in prompts])
    cache = model.new_cache(3, 20)
    steps = [model.forward(padded, cache, counts=[len(p) for p in prompts])]
    for token in (5, 77):
        steps.append(model.forward(np.full((3, 1), token), cache))
    for row, prompt in enumerate(prompts):
        single = model.new_cache(1, 20)
        alone = [model.forward(np.array([prompt]), single)]
        alone += [model.forward(np.array([[t]]), single) for t in (5, 77)]
        for got, want in zip(steps, alone):
            np.testing.assert_allclose(got[row], want[0], rtol=0, atol=1e-5 * np.abs(want).max())
    assert cache.lengths.tolist() == [len(p) + 2 for p in prompts]


def test_batch_rows_stop_independently(model, monkeypatch):
    prompts = [prompt_ids(4, seed=5), prompt_ids(9, seed=6)]
    free = greedy(model, prompts, 12)
    eos = free[0].token_ids[3]
    monkeypatch.setattr(model, "eos_token_ids", (eos,))
    out = model.generate(prompts, max_new_tokens=12)
    for row, f in zip(out, free):
        n = f.token_ids.index(eos) + 1 if eos in f.token_ids else 12
        assert row.token_ids == f.token_ids[:n]


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------

def test_sampling_with_a_seed_is_identical_under_both_backends(model):
    from conftest import HAVE_C

    settings = dict(max_new_tokens=24, do_sample=True, temperature=0.9, top_k=40, top_p=0.9, ignore_eos=True)
    runs = {}
    for name in ("numpy", "c") if HAVE_C else ("numpy",):
        with fastdecode.use_backend(name):
            runs[name] = [model.generate(TEXT, rng=seed, **settings).token_ids for seed in (0, 0, 1)]
    for name, (a, b, c) in runs.items():
        assert a == b, f"{name}: the same seed gave different tokens"
        assert a != c, f"{name}: different seeds gave the same 24 tokens"
    assert len({tuple(map(tuple, r)) for r in runs.values()}) == 1, "the backends disagree"


def test_sampling_settings_reach_the_kernel(model):
    out = model.generate(TEXT, max_new_tokens=16, do_sample=True, top_k=1, rng=3, ignore_eos=True)
    assert out.token_ids == greedy(model, TEXT, 16).token_ids  # top-k 1 is greedy
    out = model.generate(TEXT, max_new_tokens=16, repetition_penalty=1e6, ignore_eos=True)
    assert len(set(out.token_ids)) == 16  # a huge penalty forbids any repeat in greedy decoding


def test_logits_processor_sees_history_and_changes_choice(model):
    base = greedy(model, TEXT, 6).token_ids
    seen = []

    def ban_first_choice(history, logits):
        seen.append(history.copy())
        logits = logits.copy()
        logits[:, base[0]] = -np.inf
        return logits

    out = greedy(model, TEXT, 6, logits_processors=[ban_first_choice])
    assert base[0] not in out.token_ids
    prompt = model.encode(TEXT)
    assert seen[0].tolist() == [prompt] and seen[2].tolist() == [prompt + out.token_ids[:2]]


# ---------------------------------------------------------------------------
# Settings and limits
# ---------------------------------------------------------------------------

def test_generation_config_object(model):
    cfg = GenerationConfig(max_new_tokens=7, ignore_eos=True)
    assert model.generate(TEXT, config=cfg).token_ids == greedy(model, TEXT, 7).token_ids


def test_context_overflow_is_an_error(model):
    limit = model.config.max_positions
    with pytest.raises(ContextOverflowError, match=str(limit)):
        model.generate(prompt_ids(limit - 5), max_new_tokens=10)
    assert len(greedy(model, prompt_ids(limit - 5), 6).token_ids) == 6  # exactly fits
    cache = model.new_cache(1, 8)
    with pytest.raises(ContextOverflowError):
        model.forward(np.array([prompt_ids(9)]), cache)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2, tempreature=0.5), TypeError, "tempreature"),
    (dict(max_new_tokens=2, stop=[1.5]), TypeError, "stop"),
    (dict(max_new_tokens=2, stop=""), ValueError, "stop"),
])
def test_bad_settings(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(TEXT, **kwargs)


@pytest.mark.parametrize("prompt, error, match", [
    ([1, 2, 10_000], ValueError, "token ids"),
    ([[1, 2], [-1]], ValueError, "token ids"),
    ([1.5, 2.0], TypeError, "prompt"),
])
def test_bad_prompts(model, prompt, error, match):
    with pytest.raises(error, match=match):
        model.generate(prompt, max_new_tokens=2)


def test_empty_prompt_starts_from_bos(model):
    assert greedy(model, [], 3).prompt_ids == [model.config.bos_token_id]


def test_forward_rejects_bad_tokens(model):
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.array([[1, 99_999]]), cache)
    with pytest.raises(TypeError, match="tokens"):
        model.forward(np.array([1, 2]), cache)
    assert cache.lengths.tolist() == [0]


def test_kv_cache_rows_start_on_cache_lines_and_start_zeroed():
    import fastdecode as fd

    model = fd.load("default")
    cache = model.new_cache(batch=2, max_len=48)
    for a in (cache.k, cache.v):
        assert a.ctypes.data % 64 == 0 and a.strides[-2] % 64 == 0  # every cached row on a 64-byte line
        assert a.flags.c_contiguous and a.dtype == np.float32 and not a.any()


def test_decode_loops_hand_the_weight_order_back(model):
    # a decode step lends the worker pool its weight order (csrc/pool.c); a
    # stream suspended between tokens, or abandoned half-way, holds none of it
    from fastdecode import backend

    tokens = model.stream(TEXT, max_new_tokens=8, ignore_eos=True)
    next(tokens)
    next(tokens)
    assert backend._order_owner is None
    assert backend._native is None or backend._native._weight_order == []
    tokens.close()
    assert backend._order_owner is None
    assert len(greedy(model, TEXT, n=4).token_ids) == 4  # the next loop takes it again
    assert backend._order_owner is None
