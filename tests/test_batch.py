"""generate_many (continuous batching): each row equals generate() of its
prompt alone, whatever the batch size, the prefill chunk, the row order or
the other rows' settings; rows finish and are refilled independently."""
import numpy as np
import pytest

import fastdecode
from fastdecode import batch
from fastdecode.model import ContextOverflowError
from model_checkpoints import checkpoint, prompt_ids


@pytest.fixture(scope="module")
def model():
    return fastdecode.load(checkpoint("llama-gqa-tied"))


def mixed_requests(n=40, seed=0):
    """n dict prompts of 1-70 tokens with a mix of per-row settings and seeds."""
    gen = np.random.default_rng(seed)
    items = []
    for i in range(n):
        item = {"prompt": prompt_ids(int(gen.integers(1, 71)), seed=100 + i),
                "max_new_tokens": int(gen.integers(1, 30)), "ignore_eos": bool(i % 5)}
        kind = i % 4
        if kind == 1:
            item.update(do_sample=True, temperature=float(gen.uniform(0.5, 1.5)), seed=int(gen.integers(1000)))
        elif kind == 2:
            item.update(do_sample=True, top_k=20, top_p=0.9)  # seeded by the base rng
        elif kind == 3:
            item.update(repetition_penalty=1.3)
        items.append(item)
    return items


def alone(model, item, index, base_seed):
    settings = {k: v for k, v in item.items() if k not in ("prompt", "seed")}
    seed = item.get("seed", [base_seed, index])
    return model.generate(item["prompt"], rng=seed, **settings)


@pytest.fixture(scope="module")
def expected(model):
    items = mixed_requests()
    return items, [alone(model, item, i, 11) for i, item in enumerate(items)]


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_generate_many_equals_generate_alone(model, expected, max_batch):
    items, want = expected
    got = model.generate_many(items, max_batch=max_batch, rng=11, prefill_chunk=24)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.token_ids == w.token_ids, f"row {i}"
        assert (g.text, g.finish_reason, g.prompt_ids) == (w.text, w.finish_reason, w.prompt_ids), f"row {i}"
        assert g.timing.generated_tokens == len(w.token_ids)
    assert {g.finish_reason for g in got} >= {"length"}


def test_completion_order_carries_the_input_index(model, expected):
    items, want = expected
    seen = []
    for index, result in model.generate_many(items, max_batch=4, rng=11, as_completed=True):
        assert result.token_ids == want[index].token_ids
        seen.append(index)
    assert sorted(seen) == list(range(len(items)))
    assert seen != sorted(seen)  # short answers overtook long ones: slots were refilled, not waited for


def test_rows_do_not_depend_on_their_neighbours(model):
    """A sampled row's tokens are the same in any batch, any position, with any seeds beside it."""
    target = {"prompt": prompt_ids(9, seed=1), "do_sample": True, "seed": 5, "max_new_tokens": 25,
              "ignore_eos": True}
    others = [{"prompt": prompt_ids(n, seed=n), "do_sample": True, "max_new_tokens": n, "ignore_eos": True}
              for n in (3, 30, 12, 7, 21)]
    runs = [model.generate_many([target] + others, max_batch=3, rng=1)[0].token_ids,
            model.generate_many(others[:2] + [target] + others[2:], max_batch=6, rng=2)[2].token_ids,
            model.generate_many([target], max_batch=1)[0].token_ids]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] == model.generate(target["prompt"], do_sample=True, rng=5, max_new_tokens=25,
                                     ignore_eos=True).token_ids


@pytest.mark.parametrize("kind", ["gpt2", "llama3-untied"])
def test_chunked_prefill_and_text_prompts(kind):
    m = fastdecode.load(checkpoint(kind))
    prompts = ["Hello world! Hello fastdecode", "Déjà vu: café 東京 🙂", prompt_ids(60, seed=3), "x"]
    for chunk in (1, 7, 128):
        got = m.generate_many(prompts, max_batch=2, prefill_chunk=chunk, max_new_tokens=12, ignore_eos=True)
        for p, g in zip(prompts, got):
            w = m.generate(p, max_new_tokens=12, ignore_eos=True)
            assert (g.token_ids, g.text) == (w.token_ids, w.text)


def test_eos_and_stop_strings_end_rows_early(model):
    free = model.generate(prompt_ids(6, seed=9), max_new_tokens=16, ignore_eos=True)
    stop_id = free.token_ids[4]
    items = [{"prompt": prompt_ids(6, seed=9), "max_new_tokens": 16, "stop": stop_id},
             {"prompt": "Hello world", "max_new_tokens": 16, "stop": ["o"], "ignore_eos": True}]
    got = model.generate_many(items, max_batch=2)
    assert got[0].token_ids == free.token_ids[:free.token_ids.index(stop_id) + 1]
    assert got[0].finish_reason == "stop"
    w = model.generate("Hello world", max_new_tokens=16, stop=["o"], ignore_eos=True)
    assert (got[1].token_ids, got[1].text, got[1].finish_reason) == (w.token_ids, w.text, w.finish_reason)


def test_lazy_iterable_and_cache_growth(model):
    """Prompts are read as slots free up; the cache grows when a longer one comes."""
    pulled = []

    def prompts():
        for n in (2, 3, 90, 4):
            pulled.append(n)
            yield prompt_ids(n, seed=n)

    it = model.generate_many(prompts(), max_batch=2, max_new_tokens=30, ignore_eos=True, as_completed=True)
    first = next(it)
    assert pulled == [2, 3]  # two slots, nothing read ahead
    rest = [first] + list(it)
    for index, result in rest:
        n = (2, 3, 90, 4)[index]
        assert result.token_ids == model.generate(prompt_ids(n, seed=n), max_new_tokens=30,
                                                  ignore_eos=True).token_ids


def test_numpy_backend():
    gpt2 = fastdecode.load(checkpoint("gpt2"))
    prompts = [prompt_ids(n, seed=n) for n in (5, 17, 2)]
    with fastdecode.use_backend("numpy"):
        got = gpt2.generate_many(prompts, max_batch=2, max_new_tokens=10, ignore_eos=True, do_sample=True, rng=3)
        for i, (p, g) in enumerate(zip(prompts, got)):
            assert g.token_ids == gpt2.generate(p, max_new_tokens=10, ignore_eos=True, do_sample=True,
                                                rng=[3, i]).token_ids


def test_the_step_function_is_pluggable(model):
    calls = []
    plain = batch.model_step(model)

    def step(tokens, cache, counts=None, out=None):
        calls.append(tokens.shape)
        return plain(tokens, cache, counts, out)

    prompts = [prompt_ids(5, seed=1), prompt_ids(3, seed=2)]
    got = model.generate_many(prompts, max_batch=2, max_new_tokens=4, ignore_eos=True, step=step)
    assert (1, 5) in calls and (1, 3) in calls and (2, 1) in calls
    assert [g.token_ids for g in got] == [r.token_ids for r in model.generate(prompts, max_new_tokens=4,
                                                                              ignore_eos=True)]


def test_row_seed():
    assert batch.row_seed(None, 3) is None
    assert batch.row_seed(7, 3) == [7, 3]
    a, b = batch.row_seed(7, "doc-1"), batch.row_seed(7, "doc-2")
    assert a != b and a == batch.row_seed(7, "doc-1") and a[0] == 7
    with pytest.raises(TypeError, match="rng"):
        batch.row_seed(np.random.default_rng(0), 1)


def test_bad_input_names_the_prompt(model):
    with pytest.raises(ValueError, match="max_batch"):
        model.generate_many(["a"], max_batch=0)
    with pytest.raises(TypeError, match="one prompt use generate"):
        model.generate_many("hello")
    with pytest.raises(TypeError, match="one prompt use generate"):
        model.generate_many([1, 2, 3])
    with pytest.raises(TypeError, match="rng"):
        model.generate_many(["a"], rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="prompt 1: unknown generation setting"):
        model.generate_many(["a", {"prompt": "b", "temprature": 1.0}])
    with pytest.raises(ValueError, match="prompt 0: .*'prompt' key"):
        model.generate_many([{"text": "b"}])
    with pytest.raises(ContextOverflowError, match="prompt 2: .*needs"):
        model.generate_many(["a", "b", {"prompt": prompt_ids(100), "max_new_tokens": 100}])
    with pytest.raises(ValueError, match="prompt 0: .*max_new_tokens"):
        model.generate_many([{"prompt": "a", "max_new_tokens": 0}])
    with pytest.raises(TypeError, match="seed"):
        model.generate_many([{"prompt": "a", "seed": -1}])


def test_a_freed_slot_fits_the_smallest_cache(model):
    """A slot left empty when the input runs out keeps decoding a dummy; it must fit a cache sized to the rows."""
    prompts = [{"prompt": [5], "max_new_tokens": 5}, {"prompt": [5, 6, 7], "max_new_tokens": 3},
               {"prompt": [9], "max_new_tokens": 2}]
    got = model.generate_many(prompts, max_batch=2, ignore_eos=True)
    for p, g in zip(prompts, got):
        assert g.token_ids == model.generate(p["prompt"], max_new_tokens=p["max_new_tokens"],
                                             ignore_eos=True).token_ids


CHATS = [[{"role": "user", "content": "Hi"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 東京"},
          {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "More?"}]]


def test_messages_are_rendered_with_the_chat_template():
    """A {"messages": [...]} item gives model.chat's answer: the template's prompt, its end-of-turn stop."""
    from chat_checkpoints import chat_checkpoint

    m = fastdecode.load(chat_checkpoint(), prefix_cache_mb=0)
    items = [{"messages": CHATS[0], "max_new_tokens": 20, "seed": 4, "do_sample": True},
             {"messages": CHATS[1], "max_new_tokens": 20}, "plain text"]
    got = m.generate_many(items, max_batch=2, max_new_tokens=20)
    for item, g in zip(items[:2], got):
        w = m.chat(item["messages"], max_new_tokens=20, rng=item.get("seed"), do_sample=item.get("do_sample"))
        assert (g.token_ids, g.text, g.finish_reason, g.prompt_ids) == (w.token_ids, w.text, w.finish_reason,
                                                                         w.prompt_ids)
    assert got[2].token_ids == m.generate("plain text", max_new_tokens=20).token_ids
    with pytest.raises(ValueError, match="prompt 0: .*not both"):
        m.generate_many([{"prompt": "a", "messages": CHATS[0]}])


def test_messages_without_a_chat_template_name_the_prompt(model):
    from fastdecode.chat import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="prompt 1: .*no chat template"):
        model.generate_many(["a", {"messages": CHATS[0]}])


def test_the_batch_shrinks_once_the_input_is_spent(model):
    """When no prompt waits and half the slots are empty, the rows left decode in a smaller batch, same tokens."""
    rows = []
    plain = batch.default_step(model)

    def step(tokens, cache, counts=None, out=None):
        if tokens.shape[1] == 1:
            rows.append(tokens.shape[0])
        return plain(tokens, cache, counts, out)

    items = [{"prompt": prompt_ids(4 + i, seed=i), "max_new_tokens": n} for i, n in enumerate((3, 20, 4, 5, 30, 2))]
    got = model.generate_many(items, max_batch=4, ignore_eos=True, step=step)
    assert rows[0] == 4 and rows[-1] == 1 and 2 in rows and rows == sorted(rows, reverse=True)
    for item, g in zip(items, got):
        assert g.token_ids == model.generate(item["prompt"], max_new_tokens=item["max_new_tokens"],
                                             ignore_eos=True).token_ids
