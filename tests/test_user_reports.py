"""Issue 18's reports on generation and streaming, one test (or more) per
kind, each asserting the right value, under both backends where kernels
run. The model is a tiny Llama (tests/tiny_checkpoints.py) whose output a
logits processor scripts."""
import gc

import numpy as np
import pytest

import fastdecode
from fastdecode import backend as fd_backend
from fastdecode.generation import Timing
from fastdecode.model import ConfigError
from fastdecode.tokenizer import TextStream
from tiny_checkpoints import IM_END, SMILE, ids, script, tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fastdecode.load(tiny(tmp_path_factory.mktemp("tiny")))


# ---------------------------------------------------------------------------
# 2. logits processors: an array of their own; a wrong shape is an error
# ---------------------------------------------------------------------------

def test_logits_processor_may_keep_the_array_it_is_given(model, backend):
    kept, copies = [], []

    def keep(history, logits):
        kept.append(logits)
        copies.append(logits.copy())
        return logits

    out = model.generate([1, 2, 3], max_new_tokens=5, ignore_eos=True, logits_processors=[keep])
    assert len(kept) == 5
    assert all(np.array_equal(k, c) for k, c in zip(kept, copies))  # each still holds its own step's logits
    assert out.token_ids == [int(np.argmax(c[0])) for c in copies]


@pytest.mark.parametrize("bad, what", [
    (lambda h, l: l[:, :10], "(1, 10)"),
    (lambda h, l: l.astype(np.int64), "int64"),
    (lambda h, l: None, "None"),
])
def test_logits_processor_with_a_wrong_output_is_named(model, bad, what):
    with pytest.raises(ValueError, match=r"logits processor .*<lambda>.* returned .*" + what.replace("(", r"\(")
                       .replace(")", r"\)")):
        model.generate([1, 2, 3], max_new_tokens=3, logits_processors=[bad])


# ---------------------------------------------------------------------------
# 3. a stop string that is a special token's text
# ---------------------------------------------------------------------------

def test_stop_string_matches_a_special_token(model, backend):
    prompt = ids(model, "Say:")
    say, n = script(model, len(prompt), "Hi", 257, " more text")
    out = model.generate(prompt, max_new_tokens=n, stop=[IM_END], logits_processors=[say])
    assert out.token_ids == ids(model, "Hi") + [257]
    assert out.text == "Hi" and out.finish_reason == "stop" and out.stopped_by == IM_END
    pieces = list(model.stream(prompt, max_new_tokens=n, stop=[IM_END], logits_processors=[say]))
    assert "".join(p.text for p in pieces) == "Hi" and [p.id for p in pieces] == out.token_ids


@pytest.mark.parametrize("stop, text, tokens", [
    ("end" + IM_END, "Hi ", 7),  # text, then the special token: ends on the special token
    (IM_END + "\nmo", "Hi end", 10),  # the special token, then text: ends on the token that completes it
    ("d" + IM_END + "\n", "Hi en", 8),
])
def test_stop_string_spanning_text_and_a_special_token(model, stop, text, tokens):
    prompt = ids(model, "Say:")
    say, n = script(model, len(prompt), "Hi end", 257, "\nmore")
    out = model.generate(prompt, max_new_tokens=n, stop=[stop], logits_processors=[say])
    assert (out.text, out.finish_reason, out.stopped_by) == (text, "stop", stop)
    assert out.token_ids == (ids(model, "Hi end") + [257] + ids(model, "\nmore"))[:tokens]
    pieces = list(model.stream(prompt, max_new_tokens=n, stop=[stop], logits_processors=[say]))
    assert "".join(p.text for p in pieces) == text


# ---------------------------------------------------------------------------
# 4. a prompt that ends inside a character
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 2, 3])
def test_prompt_ending_inside_a_character(model, backend, cut):
    char = ids(model, SMILE)
    assert len(char) == 4
    prompt = ids(model, "ab") + char[:cut]
    say, n = script(model, len(prompt), *char[cut:], " ok!")
    run = dict(max_new_tokens=n, ignore_eos=True, logits_processors=[say])
    out = model.generate(prompt, **run)
    assert out.text == SMILE + " ok!"
    assert model.decode(prompt)[:-1] + out.text == model.decode(prompt + out.token_ids)
    pieces = [p.text for p in model.stream(prompt, **run)]
    assert "".join(pieces) == SMILE + " ok!" and pieces[4 - cut - 1] == SMILE  # on the token that completes it
    assert all("\ufffd" not in p for p in pieces)
    for stop, text in [("k!", SMILE + " o"), (SMILE, ""), (SMILE + " ", "")]:
        out = model.generate(prompt, stop=[stop], **run)
        assert (out.text, out.finish_reason, out.stopped_by) == (text, "stop", stop)
        assert "".join(p.text for p in model.stream(prompt, stop=[stop], **run)) == text


def test_text_stream_is_right_for_any_split(model):
    text = f"a{SMILE}é 東{SMILE}{SMILE}z"
    all_ids = ids(model, text)
    tok = model.tokenizer
    for split in range(len(all_ids) + 1):
        context, rest = all_ids[:split], all_ids[split:]
        stream = TextStream(tok, context)
        pieces = [stream.push(i) for i in rest] + [stream.finish()]
        shown = tok.decode(context).rstrip("\ufffd")  # what the context completes
        assert shown + "".join(pieces) == text, split
        assert all("\ufffd" not in p for p in pieces)


# ---------------------------------------------------------------------------
# 7. undefined rates are null in JSON
# ---------------------------------------------------------------------------

def test_undefined_rates_are_none():
    t = Timing(prompt_tokens=3, prefill_s=0.01, generated_tokens=1, decode_s=0.0)
    assert t.generated_tokens_per_s is None and t.prompt_tokens_per_s == pytest.approx(300)
    assert Timing(3, 0.0, 2, 0.1).prompt_tokens_per_s is None


# ---------------------------------------------------------------------------
# 8. every setting is checked, used or not
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_k=-5), ValueError, "top_k"),
    (dict(top_p=7), ValueError, "top_p"),
    (dict(min_p=2.0), ValueError, "min_p"),
    (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(ignore_eos="no"), TypeError, "ignore_eos"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature must be > 0 when do_sample=True"),
    (dict(logits_processors=[1]), TypeError, "logits_processors"),
])
def test_unused_settings_are_checked(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate([1, 2], max_new_tokens=2, **kwargs)  # greedy: none of these is used
    with pytest.raises(error, match=match):
        model.stream([1, 2], max_new_tokens=2, **kwargs)  # at the call, before any token


# ---------------------------------------------------------------------------
# 9. an explicit temperature=0 is greedy, whatever generation_config.json says
# ---------------------------------------------------------------------------

def test_temperature_zero_is_greedy_over_a_sampling_generation_config(tmp_path, backend):
    m = fastdecode.load(tiny(tmp_path / "m", generation_config=dict(do_sample=True, temperature=0.7, top_k=5)))
    out = m.generate([1, 2, 3], max_new_tokens=6, temperature=0, ignore_eos=True, rng=1)
    assert out.token_ids == m.generate([1, 2, 3], max_new_tokens=6, do_sample=False, ignore_eos=True).token_ids
    sampled = m.generate([1, 2, 3], max_new_tokens=6, ignore_eos=True, rng=1)  # the file's settings still apply
    assert sampled.token_ids == m.generate([1, 2, 3], max_new_tokens=6, ignore_eos=True, rng=1, do_sample=True,
                                           temperature=0.7, top_k=5).token_ids


def test_generation_config_values_are_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"generation_config\.json: top_p must be"):
        fastdecode.load(tiny(tmp_path / "m", generation_config=dict(top_p=3)))
    with pytest.raises(ConfigError, match=r"generation_config\.json: do_sample must be"):
        fastdecode.load(tiny(tmp_path / "n", generation_config=dict(do_sample="yes")))


# ---------------------------------------------------------------------------
# 10. messages that name the argument, or the file and field
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, match", [
    (lambda m: m.generate(None), TypeError, "prompt must be a str.*got NoneType"),
    (lambda m: m.generate({"a": 1}), TypeError, "prompt must be a str.*got dict"),
    (lambda m: m.generate([[1, 2], {"a": 1}]), TypeError, r"prompt\[1\] must be"),
    (lambda m: m.generate("ab\ud800c"), ValueError, "prompt holds a lone surrogate '\\\\ud800' at index 2"),
    (lambda m: m.generate([1], rng=-1), TypeError, "rng must be None, a non-negative int seed.*-1"),
    (lambda m: m.generate([1], config="x"), TypeError, "config must be a fastdecode.GenerationConfig"),
    (lambda m: m.stream(None), TypeError, "prompt must be a str"),
])
def test_generate_errors_name_the_argument(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)


# ---------------------------------------------------------------------------
# 18. a suspended stream holds nothing of the pool's
# ---------------------------------------------------------------------------

def test_suspended_stream_lends_the_weight_order_to_the_next_loop(tmp_path, backend):
    a = fastdecode.load(tiny(tmp_path / "a"))
    b = fastdecode.load(tiny(tmp_path / "b"))
    tokens = a.stream([1, 2, 3], max_new_tokens=8, ignore_eos=True)
    next(tokens)
    next(tokens)
    assert fd_backend._order_owner is None  # suspended: nothing lent
    seen = []

    def record(history, logits):
        if fd_backend._native is not None:
            seen.append([id(w) for w in fd_backend._native._weight_order])
        return logits

    b.generate([1, 2, 3], max_new_tokens=3, ignore_eos=True, logits_processors=[record])
    if fd_backend._native is not None:  # b's decode steps read ahead in b's weights, not a's
        assert seen[1:] == [[id(w) for w in b.weights.decode_order()]] * 2
    assert len([t.id for t in tokens]) == 6  # a's stream goes on


def test_dropped_stream_frees_the_model(tmp_path):
    import weakref

    m = fastdecode.load(tiny(tmp_path / "a"))
    head = weakref.ref(m.weights.head)
    tokens = m.stream([1, 2, 3], max_new_tokens=8, ignore_eos=True)
    next(tokens)
    del m, tokens
    gc.collect()
    assert head() is None
