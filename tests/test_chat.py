"""Chat templates: fastdecode's rendering equals transformers' apply_chat_template;
model.chat / stream_chat stop at the template's end-of-turn token."""
import numpy as np
import pytest

import fastdecode
from fastdecode.chat import ChatTemplateError, chat_ids, end_of_turn_ids, template_of
from chat_checkpoints import TEMPLATES, chat_checkpoint
from model_checkpoints import checkpoint

transformers = pytest.importorskip("transformers", reason="the templates are compared with transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b> 東京 \"q\""},
     {"role": "assistant", "content": " Hello! "}, {"role": "user", "content": "More?\n"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": None},
     {"role": "user", "content": "🙂 c"}],
]


@pytest.fixture(scope="module")
def model():
    return fastdecode.load(chat_checkpoint(), prefix_cache_mb=0)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(chat_checkpoint())


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_transformers(model, hf_tokenizer, name, add_generation_prompt):
    template = template_of(model, TEMPLATES[name])
    for messages in CONVERSATIONS:
        if name == "llama2" and messages[0]["role"] == "system":
            messages = messages[1:]
        ours = template.render(messages, add_generation_prompt=add_generation_prompt)
        theirs = hf_tokenizer.apply_chat_template(messages, chat_template=TEMPLATES[name], tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        assert ours == theirs
        ids = hf_tokenizer.apply_chat_template(messages, chat_template=TEMPLATES[name], tokenize=True,
                                               add_generation_prompt=add_generation_prompt, return_dict=False)
        assert model.tokenizer.encode(ours, add_special_tokens=False) == list(ids)


def test_checkpoint_template_is_the_default(model, hf_tokenizer):
    messages = CONVERSATIONS[1]
    assert chat_ids(model, template_of(model), messages) == list(
        hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))


@pytest.mark.parametrize("messages, needle", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
    ([{"role": "tool", "content": "a"}], "must alternate"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "Only user and assistant"),
])
def test_raise_exception_is_a_clear_error(model, hf_tokenizer, messages, needle):
    with pytest.raises(ChatTemplateError, match=needle):
        model.chat(messages, template=TEMPLATES["llama2"], max_new_tokens=2)
    with pytest.raises(Exception, match=needle):  # transformers refuses the same conversations
        hf_tokenizer.apply_chat_template(messages, chat_template=TEMPLATES["llama2"], tokenize=False)


def test_bad_messages_and_templates(model):
    with pytest.raises(TypeError, match="messages"):
        model.chat("hi")
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        model.chat(["hi"])
    with pytest.raises(ValueError, match="role"):
        model.chat([{"content": "hi"}])
    with pytest.raises(ChatTemplateError, match="not valid Jinja2"):
        model.chat([{"role": "user", "content": "hi"}], template="{% for %}")


def test_a_model_without_template_is_a_clear_error():
    m = fastdecode.load(checkpoint("llama-gqa-tied"), prefix_cache_mb=0)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        m.chat([{"role": "user", "content": "hi"}])
    out = m.chat([{"role": "user", "content": "hi"}], template=TEMPLATES["chatml"], max_new_tokens=3)
    assert len(out.token_ids) >= 1


@pytest.mark.parametrize("name, token", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("tojson", None)])
def test_end_of_turn_token(model, name, token):
    expected = () if token is None else (model.tokenizer._tok.token_to_id(token),)
    assert end_of_turn_ids(template_of(model, TEMPLATES[name]), model.tokenizer) == expected


def force_after(token: int, n: int):
    """A logits processor that makes `token` the choice once n tokens are generated."""
    def proc(history, logits):
        made = (history >= 0).sum(axis=1) - proc.prompt
        logits = logits.copy()
        logits[made >= n, token] = 1e4
        return logits
    return proc


@pytest.mark.usefixtures("backend")
def test_chat_stops_at_end_of_turn(model):
    messages = CONVERSATIONS[1]
    im_end = model.tokenizer._tok.token_to_id("<|im_end|>")
    ids = chat_ids(model, template_of(model), messages)
    proc = force_after(im_end, 3)
    proc.prompt = len(ids)
    out = model.chat(messages, max_new_tokens=20, logits_processors=[proc])
    assert out.prompt_ids == ids
    assert len(out.token_ids) == 4 and out.token_ids[-1] == im_end
    assert out.finish_reason == "stop" and out.stopped_by == im_end
    assert "<|im_end|>" not in out.text and out.text == model.decode(out.token_ids[:-1])
    # without the chat, generate on the same ids does not stop there
    plain = model.generate(ids, max_new_tokens=20, logits_processors=[proc], ignore_eos=True)
    assert plain.token_ids[:4] == out.token_ids and len(plain.token_ids) == 20
    pieces = list(model.stream_chat(messages, max_new_tokens=20, logits_processors=[proc]))
    assert [p.id for p in pieces] == out.token_ids and "".join(p.text for p in pieces) == out.text


def test_chat_equals_generate_on_the_rendered_ids(model):
    messages = CONVERSATIONS[2]
    out = model.chat(messages, max_new_tokens=12, ignore_eos=True)
    ref = model.generate(chat_ids(model, template_of(model), messages), max_new_tokens=12, ignore_eos=True,
                         stop=[model.tokenizer._tok.token_to_id("<|im_end|>")])
    assert out.token_ids == ref.token_ids and out.text == ref.text
    assert np.isfinite(out.timing.prompt_tokens_per_s)
