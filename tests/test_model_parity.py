"""The model's logits and greedy tokens against Hugging Face transformers (PyTorch
CPU) on tiny random checkpoints: GPT-2, Llama with grouped-query attention
(tied embeddings; untied with Llama-3 rope scaling), Qwen2, Mistral."""
import numpy as np
import pytest
from scipy.special import expit

import fastdecode
from fastdecode.model import transformer
from fastdecode.reference import norm as ref_norm
from conftest import requires_c
from model_checkpoints import KINDS, build, checkpoint, hf_logits, hf_model, prompt_ids, torch_and_transformers

PROMPT = 13
DECODE = [7, 42, 101, 3, 250, 9]  # fed one at a time through the cache


def assert_close(got, want, what):
    """max |diff| <= 1e-4 of the logits' scale (their largest magnitude)."""
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"{what}: max |diff| {err:.3g} > 1e-4 x {scale:.3g}"


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def test_prompt_then_cached_decode_matches_transformers(kind, backend):
    directory = checkpoint(kind)
    hf = hf_model(directory)
    model = fastdecode.load(directory)
    ids = prompt_ids(PROMPT)
    want = hf_logits(hf, ids + DECODE)  # [T, V]
    cache = model.new_cache(1, 32)
    got = model.forward(np.array([ids]), cache, all_logits=True)[0]
    assert_close(got, want[:PROMPT], f"{kind} prompt")
    for step, token in enumerate(DECODE):
        got = model.forward(np.array([[token]]), cache)[0]
        assert_close(got, want[PROMPT + step], f"{kind} decode step {step}")
    assert cache.lengths.tolist() == [PROMPT + len(DECODE)]


def test_gpt2_attention_scaled_by_inverse_layer_index(tmp_path):
    hf = hf_model(build("gpt2", str(tmp_path), scale_attn_by_inverse_layer_idx=True))
    model = fastdecode.load(tmp_path)
    assert model.config.scale_by_inverse_layer
    ids = prompt_ids(PROMPT)
    cache = model.new_cache(1, 32)
    assert_close(model.forward(np.array([ids]), cache, all_logits=True)[0], hf_logits(hf, ids), "prompt")


def test_chunked_prefill_equals_one_prefill(backend):
    model = fastdecode.load(checkpoint("llama-gqa-tied"))
    ids = prompt_ids(PROMPT)
    want = model.forward(np.array([ids]), model.new_cache(1, 32), all_logits=True)[0]
    cache = model.new_cache(1, 32)
    model.forward(np.array([ids[:5]]), cache)
    got = model.forward(np.array([ids[5:]]), cache, all_logits=True)[0]
    assert_close(got, want[5:], "second chunk")


def test_greedy_generation_equals_transformers_generate(kind):
    directory = checkpoint(kind)
    hf = hf_model(directory)
    model = fastdecode.load(directory)
    ids = prompt_ids(PROMPT, seed=1)
    got = model.generate(ids, max_new_tokens=32, ignore_eos=True)
    hf.generation_config.eos_token_id = None  # both run the full 32 tokens
    torch, _ = torch_and_transformers()
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=0)[0, PROMPT:]
    assert got.token_ids == want.tolist()
    assert got.finish_reason == "length" and len(got.token_ids) == 32


@requires_c
def test_greedy_tokens_equal_under_both_backends():
    model = fastdecode.load(checkpoint("llama3-untied"))
    runs = {}
    for name in ("numpy", "c"):
        with fastdecode.use_backend(name):
            runs[name] = model.generate(prompt_ids(PROMPT, seed=2), max_new_tokens=24, ignore_eos=True).token_ids
    assert runs["numpy"] == runs["c"]


def test_float32_end_to_end(monkeypatch):
    """Every array the forward pass hands to a kernel or returns is float32
    (a float64 scalar anywhere would promote the stream)."""
    model = fastdecode.load(checkpoint("gpt2"))
    seen = []
    real = fastdecode.ops.attention

    def spy(q, k, v, **kw):
        seen.extend(a.dtype for a in (q, k, v))
        return real(q, k, v, **kw)

    monkeypatch.setattr(fastdecode.ops, "attention", spy)
    for w in [model.weights.embed, model.weights.head, *vars(model.weights.layers[0]).values()]:
        assert w is None or w.dtype == np.float32
    cache = model.new_cache(1, 16)
    logits = model.forward(np.array([prompt_ids(5)]), cache)
    logits2 = model.forward(np.array([[3]]), cache)
    assert logits.dtype == logits2.dtype == cache.k.dtype == np.float32
    assert seen and set(seen) == {np.dtype(np.float32)}
    x = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
    w = np.ones(8, np.float32)
    for name, y in [("layer_norm", fastdecode.layer_norm(x, w, w, 1e-5)),
                    ("rms_norm", fastdecode.rms_norm(x, w, 1e-6)),
                    ("layer_norm ref", ref_norm.layer_norm(x, w, w, 1e-5)),
                    ("rms_norm ref", ref_norm.rms_norm(x, w, 1e-6)),
                    ("gelu_tanh", transformer.gelu_tanh(x)), ("gelu_erf", transformer.gelu_erf(x)),
                    ("silu", transformer.silu(x))]:
        assert y.dtype == np.float32, name
    cos, sin = transformer.rope_angles(model.config, np.array([[0, 1, 2]]))
    assert cos.dtype == sin.dtype == np.float32


def test_silu_stays_finite_for_large_inputs():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    with np.errstate(all="raise"):
        y = transformer.silu(x)
    np.testing.assert_allclose(y, x * expit(x.astype(np.float64)), rtol=1e-6, atol=1e-30)
