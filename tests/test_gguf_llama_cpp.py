"""llama.cpp itself as the peer (llama-cpp-python, the `peers` extra): the
GGUF files fastdecode writes load there, tokenize to the same ids and decode
to the same greedy tokens. Agreement lengths of the block formats are
printed (they can part at a near-tie: llama.cpp quantizes activations to
8 bits for its block dot products)."""
import warnings

import numpy as np
import pytest

import fastdecode
import gguf_files as gf
import model_checkpoints as mc
from gguf_files import TEXTS

STEPS = 32


def llama(path, logits_all=False):
    """llama.cpp's model of `path`; skips the calling test without llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (pip install '.[peers]') is the peer")
    # type_k/type_v 0: a float32 KV cache (llama.cpp defaults to f16; fastdecode keeps float32)
    return llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=1, seed=0, verbose=False, logits_all=logits_all,
                           type_k=0, type_v=0)


def load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastdecode.load(path)


def llama_greedy(llm, ids, n):
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            return out
    return out


def agreement(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("kind", list(mc.KINDS))
def test_float32_files_decode_the_same_greedy_tokens_in_llama_cpp(kind):
    path = gf.gguf_of(kind, "f32")
    model, llm = load(path), llama(path, logits_all=True)
    ids = mc.prompt_ids(12, seed=1)
    llm.eval(ids)
    want = np.asarray(llm.scores[:len(ids)], np.float32)  # [T, V] llama.cpp's logits of the prompt
    got = model.forward(np.array([ids]), model.new_cache(1, len(ids)), all_logits=True)[0]
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 1e-3 * scale, kind
    ours = model.generate(ids, max_new_tokens=STEPS, ignore_eos=True).token_ids
    assert llama_greedy(llama(path), ids, STEPS) == ours


@pytest.mark.parametrize("weights", ["q8_0", "q4_0"])
@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa-tied", "qwen2"])
def test_block_format_files_agree_with_llama_cpp(kind, weights, capsys):
    path = gf.gguf_of(kind, weights)
    model, llm = load(path), llama(path, logits_all=True)
    ids = mc.prompt_ids(12, seed=1)
    llm.eval(ids)
    want = np.asarray(llm.scores[:len(ids)], np.float32)
    got = model.forward(np.array([ids]), model.new_cache(1, len(ids)), all_logits=True)[0]
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    ours = model.generate(ids, max_new_tokens=STEPS, ignore_eos=True).token_ids
    same = agreement(llama_greedy(llama(path), ids, STEPS), ours)
    with capsys.disabled():
        print(f"\nllama.cpp vs fastdecode, {kind} {weights}: prompt logits max rel diff {err:.2e}, "
              f"greedy tokens agree for {same}/{STEPS}")
    assert err <= 0.05, err  # llama.cpp rounds activations to 8 bits (q8_0 blocks) for its block dot products
    assert same >= 1


@pytest.mark.parametrize("name", ["gpt2-bpe", "spm", "llama-bpe", "qwen2"])
def test_llama_cpp_tokenizes_the_files_vocabulary_as_fastdecode(name, tmp_path):
    directory = mc.checkpoint("gpt2") if name == "gpt2-bpe" else gf.checkpoint_with_tokenizer(name)
    path = str(tmp_path / "tok.gguf")
    fastdecode.load(directory).save(path, weights="f32")
    tok, llm = load(path).tokenizer, llama(path)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode(text), (name, text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            tok.encode(text, add_special_tokens=False), (name, text)
