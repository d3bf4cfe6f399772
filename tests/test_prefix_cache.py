"""The prefix cache: generate() results equal a cold run's; the byte bound
and least-recently-used eviction; many threads sharing prefixes."""

import numpy as np
import pytest

import fastdecode
from fastdecode.prefix_cache import PrefixCache
from model_checkpoints import checkpoint, prompt_ids
from test_reliability import run_threads

SYSTEM = prompt_ids(40, seed=1)
PROMPTS = [SYSTEM + prompt_ids(n, seed=s) for n, s in [(5, 2), (9, 3), (1, 4)]] + [SYSTEM[:20], prompt_ids(30, seed=5)]


@pytest.fixture(scope="module")
def cold():
    return fastdecode.load(checkpoint("llama-gqa-tied"), prefix_cache_mb=0)


def kv_bytes(model, positions):
    c = model.config
    return 2 * c.num_layers * c.num_kv_heads * positions * c.head_dim * 4


def same(a, b):
    assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("kind", ["llama-gqa-tied", "gpt2"])
def test_results_equal_a_cold_run(kind):
    warm = fastdecode.load(checkpoint(kind))
    cold = fastdecode.load(checkpoint(kind), prefix_cache_mb=0)
    assert cold.prefix_cache is None and warm.prefix_cache is not None
    reused = 0
    for settings in [dict(), dict(do_sample=True, top_p=0.9, rng=7), dict(repetition_penalty=1.2)]:
        for p in PROMPTS + PROMPTS[::-1]:
            a = warm.generate(p, max_new_tokens=12, ignore_eos=True, **settings)
            same(a, cold.generate(p, max_new_tokens=12, ignore_eos=True, **settings))
            reused += a.timing.cached_tokens
            b = list(warm.stream(p, max_new_tokens=12, ignore_eos=True, **settings))
            assert [t.id for t in b] == a.token_ids
    assert reused > 0 and warm.prefix_cache.hits > 0


def test_what_is_reused(cold):
    model = fastdecode.load(checkpoint("llama-gqa-tied"))
    first = model.generate(PROMPTS[0], max_new_tokens=6, ignore_eos=True)
    assert first.timing.cached_tokens == 0
    again = model.generate(PROMPTS[0], max_new_tokens=6, ignore_eos=True)
    assert again.timing.cached_tokens == len(PROMPTS[0]) - 1  # the last position's logits are computed again
    other = model.generate(PROMPTS[1], max_new_tokens=6, ignore_eos=True)
    assert other.timing.cached_tokens == len(SYSTEM)
    # a prompt that continues an answer reuses the answer too
    follow = PROMPTS[1] + other.token_ids + prompt_ids(3, seed=9)
    out = model.generate(follow, max_new_tokens=6, ignore_eos=True)
    assert out.timing.cached_tokens == len(PROMPTS[1]) + len(other.token_ids) - 1
    same(out, cold.generate(follow, max_new_tokens=6, ignore_eos=True))
    batch = model.generate(PROMPTS[:2], max_new_tokens=4)  # batches run cold
    assert batch[0].timing.cached_tokens == 0


def test_eviction_under_a_byte_bound(cold):
    one = kv_bytes(cold, 41 + 5)  # a 41-token prompt + 6 new tokens - 1
    cache = PrefixCache(cold.config, 2 * one)
    model = fastdecode.model.Model(cold.config, cold.weights, cold.tokenizer, {}, cold.eos_token_ids, cold.path)
    model.prefix_cache = cache
    prompts = [prompt_ids(41, seed=100 + i) for i in range(4)]
    for p in prompts[:2]:
        model.generate(p, max_new_tokens=6, ignore_eos=True)
    assert len(cache) == 2 and cache.bytes == 2 * one
    model.generate(prompts[0], max_new_tokens=6, ignore_eos=True)  # touch the first: the second is now oldest
    model.generate(prompts[2], max_new_tokens=6, ignore_eos=True)
    assert len(cache) == 2 and cache.bytes <= 2 * one
    hits = [model.generate(p, max_new_tokens=6, ignore_eos=True).timing.cached_tokens for p in prompts[2:3]]
    assert hits == [40]
    assert model.generate(prompts[1], max_new_tokens=6, ignore_eos=True).timing.cached_tokens == 0  # evicted
    tiny = PrefixCache(cold.config, one - 1)  # nothing fits: nothing kept
    model.prefix_cache = tiny
    model.generate(prompts[3], max_new_tokens=6, ignore_eos=True)
    assert len(tiny) == 0 and tiny.bytes == 0


def test_a_longer_entry_replaces_its_prefix(cold):
    cache = PrefixCache(cold.config, 1 << 30)
    model = fastdecode.model.Model(cold.config, cold.weights, cold.tokenizer, {}, cold.eos_token_ids, cold.path)
    model.prefix_cache = cache
    out = model.generate(SYSTEM, max_new_tokens=4, ignore_eos=True)
    model.generate(SYSTEM + out.token_ids + [5, 6], max_new_tokens=4, ignore_eos=True)
    assert len(cache) == 1
    model.generate(SYSTEM[:10], max_new_tokens=1)  # covered by the kept entry: nothing added
    assert len(cache) == 1


def test_threads_sharing_prefixes(cold):
    model = fastdecode.load(checkpoint("llama-gqa-tied"), prefix_cache_mb=1)
    jobs = [(PROMPTS[i % 3] + prompt_ids(i % 4, seed=50 + i % 4), dict(rng=i) if i % 2 else {}) for i in range(24)]
    expected = [cold.generate(p, max_new_tokens=8, ignore_eos=True, do_sample=bool(s), **s).token_ids for p, s in jobs]
    got = [None] * len(jobs)

    def work(worker):
        for i in range(worker, len(jobs), 8):
            p, s = jobs[i]
            got[i] = model.generate(p, max_new_tokens=8, ignore_eos=True, do_sample=bool(s), **s).token_ids

    errors = run_threads(work)
    assert not errors and got == expected
    assert model.prefix_cache.bytes <= 1 << 20


@pytest.mark.parametrize("bad", [-1, "big", float("nan"), True])
def test_bad_size(bad):
    with pytest.raises(ValueError, match="prefix_cache_mb"):
        fastdecode.load(checkpoint("llama-gqa-tied"), prefix_cache_mb=bad)
