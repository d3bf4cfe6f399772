"""Sessions: each turn equals a cold run on the full transcript, the cache
grows as needed, save/restore, the overflow policies, answers cut short."""
import threading

import numpy as np
import pytest

import fastdecode
from fastdecode.chat import chat_ids, template_of
from fastdecode.model import ContextOverflowError
from chat_checkpoints import TEMPLATES, chat_checkpoint
from model_checkpoints import checkpoint, prompt_ids

TURNS = ["Hello there!", "Déjà vu: café 東京 🙂", "def main():\n    return 42"]


@pytest.fixture(scope="module")
def model():
    return fastdecode.load(chat_checkpoint(), prefix_cache_mb=0)


def cold_chat(model, messages, **kw):
    return model.chat(messages, **kw)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("template", [None, "llama3"])
def test_three_turns_equal_cold_runs(model, template):
    source = TEMPLATES.get(template)
    session = model.session(template=source)
    messages = [{"role": "system", "content": "Be brief."}]
    session.messages = list(messages)
    before = []
    for i, text in enumerate(TURNS):
        settings = dict(max_new_tokens=10, ignore_eos=True, **(dict(do_sample=True, rng=i) if i == 1 else {}))
        out = session.chat(text, **settings)
        messages.append({"role": "user", "content": text})
        ref = model.chat(messages, template=source, **settings)
        assert out.token_ids == ref.token_ids and out.text == ref.text
        assert out.prompt_ids == chat_ids(model, template_of(model, source), messages)
        # the last turn's prompt was cached (its answer too, where it tokenizes the same when rendered;
        # a template's whitespace around the answer may shift a token or two)
        assert out.timing.cached_tokens >= len(before) - 2 and out.timing.cached_tokens < len(out.prompt_ids)
        before = out.prompt_ids
        messages.append({"role": "assistant", "content": out.text})
        assert session.messages == messages


@pytest.mark.usefixtures("backend")
def test_generate_turns_equal_generate_on_the_history():
    model = fastdecode.load(checkpoint("gpt2"), prefix_cache_mb=0)
    session = model.session()
    history = []
    for i, p in enumerate([prompt_ids(7, seed=1), prompt_ids(3, seed=2), "Hello world"]):
        out = session.generate(p, max_new_tokens=8, ignore_eos=True)
        new = model.tokenizer.encode(p, add_special_tokens=not history) if isinstance(p, str) else p
        ref = model.generate(history + new, max_new_tokens=8, ignore_eos=True)
        assert out.token_ids == ref.token_ids
        assert out.timing.cached_tokens == (len(history) - 1 if history else 0)
        history += new + out.token_ids
        assert session.history == history


def test_the_cache_grows_as_needed(model):
    session = model.session()
    session.chat("hi", max_new_tokens=4, ignore_eos=True)
    first = session._cache.max_len
    assert first < model.config.max_positions  # no full-context allocation up front
    session.chat("a longer question, to make the transcript grow " * 2, max_new_tokens=4, ignore_eos=True)
    assert session._cache.max_len >= len(session._ids) and session._cache.max_len > first


def test_save_and_restore(model, tmp_path):
    a = model.session()
    a.chat(TURNS[0], max_new_tokens=6, ignore_eos=True)
    a.chat(TURNS[1], max_new_tokens=6, ignore_eos=True)
    path = tmp_path / "s.npz"
    a.save(path)
    b = model.session(path)
    assert b.messages == a.messages and b.history == a.history
    np.testing.assert_array_equal(b._ids, a._ids)
    x, y = a.chat(TURNS[2], max_new_tokens=6, ignore_eos=True), b.chat(TURNS[2], max_new_tokens=6, ignore_eos=True)
    assert x.token_ids == y.token_ids and y.timing.cached_tokens == x.timing.cached_tokens > 0
    other = fastdecode.load(checkpoint("llama-gqa-tied"), prefix_cache_mb=0)  # same shapes, other weights
    with pytest.raises(ValueError, match="another model"):
        other.session(path)
    (tmp_path / "junk.npz").write_bytes(b"not a session")
    with pytest.raises(ValueError, match="not a fastdecode session"):
        model.session(tmp_path / "junk.npz")
    empty = tmp_path / "empty.npz"
    model.session().save(empty)
    assert model.session(empty).chat("hi", max_new_tokens=3).timing.cached_tokens == 0


def test_overflow_policies(model):
    n = model.config.max_positions  # 512
    long = "many words in a long message " * 12
    strict = model.session()
    with pytest.raises(ContextOverflowError, match="drop_oldest"):
        for _ in range(20):
            strict.chat(long, max_new_tokens=8, ignore_eos=True)
    assert len(strict.messages) % 2 == 0  # the refused turn left no trace
    lenient = model.session(overflow="drop_oldest")
    lenient.messages = [{"role": "system", "content": "S"}]
    for i in range(12):
        out = lenient.chat(long, max_new_tokens=8, ignore_eos=True)
        assert len(out.prompt_ids) + 7 <= n
        # the kept messages give the same answer cold
        ref = model.chat(lenient.messages[:-1], max_new_tokens=8, ignore_eos=True)
        assert out.token_ids == ref.token_ids
    assert lenient.messages[0]["role"] == "system" and len(lenient.messages) < 2 * 12 + 1
    with pytest.raises(ContextOverflowError):
        lenient.chat("word " * 200, max_new_tokens=8)


def test_an_answer_cut_short_still_counts(model):
    session = model.session()
    stream = session.stream_chat(TURNS[0], max_new_tokens=20, ignore_eos=True)
    got = [next(stream) for _ in range(3)]
    stream.close()  # as Ctrl-C does in `fastdecode chat`
    assert session.messages[-1] == {"role": "assistant", "content": "".join(t.text for t in got)}
    out = session.chat(TURNS[1], max_new_tokens=6, ignore_eos=True)
    ref = model.chat(session.messages[:-1], max_new_tokens=6, ignore_eos=True)
    assert out.token_ids == ref.token_ids and out.timing.cached_tokens > 0


def test_interrupt_inside_the_forward_pass(model, monkeypatch):
    session = model.session()
    session.chat(TURNS[0], max_new_tokens=4, ignore_eos=True)
    import fastdecode.generation as generation
    from fastdecode.model.compiled import CompiledModel

    calls = []

    def interrupting(real):  # the third step, on whichever path the backend runs (compiled step or forward)
        def interrupted(*args, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*args, **kw)
        return interrupted

    monkeypatch.setattr(generation, "forward", interrupting(generation.forward))
    monkeypatch.setattr(CompiledModel, "_run", interrupting(CompiledModel._run))
    with pytest.raises(KeyboardInterrupt):
        session.chat(TURNS[1], max_new_tokens=10, ignore_eos=True)
    monkeypatch.undo()
    out = session.chat(TURNS[2], max_new_tokens=5, ignore_eos=True)  # the session is still usable and right
    ref = model.chat(session.messages[:-1], max_new_tokens=5, ignore_eos=True)
    assert out.token_ids == ref.token_ids


def test_reset_and_one_generation_at_a_time(model):
    session = model.session()
    session.chat(TURNS[0], max_new_tokens=3)
    session.reset()
    assert session.messages == [] and session.history == []
    assert session.chat(TURNS[1], max_new_tokens=3).timing.cached_tokens == 0
    stream = session.stream_chat(TURNS[2], max_new_tokens=10, ignore_eos=True)
    next(stream)
    with pytest.raises(RuntimeError, match="one generation at a time"):
        session.chat("again", max_new_tokens=3)
    stream.close()
    session.chat("again", max_new_tokens=3)
    with pytest.raises(ValueError, match="overflow"):
        model.session(overflow="shift")
    with pytest.raises(TypeError, match="message"):
        session.chat(42)
