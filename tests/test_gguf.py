"""GGUF files: written by fastdecode (Model.save, `fastdecode convert`) and
by gguf's writer, loaded back: logits equal transformers' on the same
weights (float types) or on the dequantized weights (block types), the
tokenizer rebuilt from tokenizer.ggml.* gives the tokenizer.json's ids, and
every malformed file is a ValueError naming the key or tensor."""
import copy
import json
import os
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import safetensors.numpy

import fastdecode
import gguf_files as gf
import model_checkpoints as mc
from fastdecode.formats import QuantizedTensor
from fastdecode.model import gguf as fd_gguf
from fastdecode.model import gguf_weights as fd_gguf_weights
from fastdecode.model import gguf_tokenizer as gt
from gguf_files import TEXTS

gguf = pytest.importorskip("gguf", reason="GGUF files are read and written with llama.cpp's gguf package")
PROMPT = 12


def logits(model, ids):
    return model.forward(np.array([ids]), model.new_cache(1, len(ids)), all_logits=True)[0]


def assert_close(got, want, what, rel=1e-4):
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel} x {scale:.3g}"


def hf_from_gguf(path, directory):
    """The transformers model of checkpoint `directory` with every weight
    replaced by the GGUF's, dequantized by gguf.quants and un-permuted: the
    reference (skips the calling test without torch or transformers)."""
    torch, _ = mc.torch_and_transformers()
    ref = copy.deepcopy(mc.hf_model(directory))
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = fastdecode.load(path).config
    found = fd_gguf_weights.GGUFTensors(path, reader, config, arch)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for t in reader.tensors:
            name = fd_gguf_weights.hf_name(t.name, arch)
            if name is None or name not in params:
                continue
            w = found.float(t.name, tuple(int(x) for x in reversed(t.shape)))
            if arch == "gpt2" and name.startswith("transformer.h.") and w.ndim == 2:
                w = w.T  # Conv1D's [in, out]
            params[name].copy_(torch.from_numpy(np.array(w)))
    return ref


# ---------------------------------------------------------------------------
# Models: written, read back, same answers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(mc.KINDS))
def test_float32_gguf_equals_transformers_and_the_directory(kind):
    directory = mc.checkpoint(kind)
    model = fastdecode.load(gf.gguf_of(kind))
    ids = mc.prompt_ids(PROMPT)
    hf_dir = fastdecode.load(directory)
    want = hf_dir.generate(ids, max_new_tokens=24, ignore_eos=True).token_ids
    assert model.generate(ids, max_new_tokens=24, ignore_eos=True).token_ids == want
    assert_close(logits(model, ids), mc.hf_logits(mc.hf_model(directory), ids), kind)  # skips without torch


@pytest.mark.parametrize("weights", ["f16", "bf16"])
def test_16_bit_files_equal_transformers_on_the_rounded_weights(weights):
    path = gf.gguf_of("llama3-untied", weights)
    assert fastdecode.load(path).weights.layers[1].down.format == weights
    ids = mc.prompt_ids(PROMPT)
    assert_close(logits(fastdecode.load(path), ids), mc.hf_logits(hf_from_gguf(path, mc.checkpoint("llama3-untied")), ids), weights)


@pytest.mark.parametrize("kind,weights", [("llama-gqa-tied", "q8_0"), ("qwen2", "q4_0"), ("gpt2", "q8_0"),
                                          ("mistral", "q4_0")])
def test_block_formats_equal_the_dequantized_reference(kind, weights):
    path = gf.gguf_of(kind, weights)
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    assert weights.upper() in types
    ids = mc.prompt_ids(PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept as they are: nothing dequantized, no warning
        model = fastdecode.load(path)
    layer = model.weights.layers[0]
    assert all(isinstance(m, QuantizedTensor) and m.format == weights for m in (layer.qkv, layer.out, layer.down))
    # the same blocks as the directory quantized at load (gguf.quants, bit-identical): the same logits, bit for bit
    same = fastdecode.load(mc.checkpoint(kind), weights=weights)
    for a, b in ((same.weights.layers[1].qkv, model.weights.layers[1].qkv), (same.weights.head, model.weights.head)):
        assert a.format == b.format and a.shape == b.shape
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(logits(model, ids), logits(same, ids))
    # and transformers on the dequantized weights, within the 8-bit activations of the block dot products
    assert_close(logits(model, ids), mc.hf_logits(hf_from_gguf(path, mc.checkpoint(kind)), ids), f"{kind} {weights}", 0.05)


def test_q4_k_m_writes_q4_k_and_q6_k_and_reads_them_back():
    path = gf.gguf_of("llama-gqa-tied", "q4_k_m", hidden_size=256, intermediate_size=256)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_v.weight"] == "Q6_K"
    assert types["blk.1.ffn_down.weight"] == "Q6_K" and types["blk.1.attn_norm.weight"] == "F32"
    ref = hf_from_gguf(path, gf.wide_checkpoint("llama-gqa-tied", hidden_size=256, intermediate_size=256))
    model = fastdecode.load(path)
    assert isinstance(model.weights.layers[0].out, QuantizedTensor) and model.weights.layers[0].out.format == "q4_K"
    ids = mc.prompt_ids(PROMPT)
    assert_close(logits(model, ids), mc.hf_logits(ref, ids), "q4_k_m", 0.05)  # 8-bit activations, as llama.cpp


def test_weights_at_load_quantize_only_a_float32_file():
    model = fastdecode.load(gf.gguf_of("qwen2"), weights="q8_0")
    assert model.weights.layers[0].up.format == "q8_0"
    with pytest.raises(ValueError, match="not all F32"):
        fastdecode.load(gf.gguf_of("qwen2", "q4_0"), weights="q8_0")


def test_types_without_kernels_are_dequantized_with_one_warning(tmp_path):
    src = gf.gguf_of("llama-gqa-tied")
    retype = {"blk.0.attn_q.weight": gguf.GGMLQuantizationType.Q5_0,
              "blk.1.ffn_up.weight": gguf.GGMLQuantizationType.Q5_1}
    path = gf.rewrite(src, str(tmp_path / "q5.gguf"), retype=retype)
    with pytest.warns(UserWarning, match="Q5_0, Q5_1") as record:
        model = fastdecode.load(path)
    assert len(record) == 1
    ids = mc.prompt_ids(PROMPT)
    assert_close(logits(model, ids), mc.hf_logits(hf_from_gguf(path, mc.checkpoint("llama-gqa-tied")), ids), "q5", 1e-2)


def test_llama_q_and_k_rows_are_permuted_in_the_file_and_qwen2_rows_are_not():
    for kind, permuted in (("llama-gqa-tied", True), ("qwen2", False)):
        directory = mc.checkpoint(kind)
        reader = gguf.GGUFReader(gf.gguf_of(kind))
        k_file = next(np.asarray(t.data) for t in reader.tensors if t.name == "blk.0.attn_k.weight")
        k_hf = safetensors.numpy.load_file(os.path.join(directory, "model.safetensors"))[
            "model.layers.0.self_attn.k_proj.weight"]  # [kv_heads * head_dim, hidden], transformers' layout
        with open(os.path.join(directory, "config.json")) as f:
            kv_heads = json.load(f)["num_key_value_heads"]
        expected = fd_gguf_weights.permute(k_hf, kv_heads) if permuted else k_hf
        np.testing.assert_array_equal(k_file.reshape(k_hf.shape), expected)
        np.testing.assert_array_equal(fd_gguf_weights.unpermute(fd_gguf_weights.permute(k_hf, 2), 2), k_hf)


def test_tied_head_when_output_weight_is_absent():
    names = {t.name for t in gguf.GGUFReader(gf.gguf_of("llama-gqa-tied")).tensors}
    assert "output.weight" not in names
    model = fastdecode.load(gf.gguf_of("llama-gqa-tied"))
    assert model.config.tie_embeddings and model.weights.head is model.weights.embed
    assert "output.weight" in {t.name for t in gguf.GGUFReader(gf.gguf_of("qwen2")).tensors}


def test_hyperparameters_come_from_the_arch_keys():
    for kind in mc.KINDS:
        want = fastdecode.load(mc.checkpoint(kind)).config
        got = fastdecode.load(gf.gguf_of(kind)).config
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "max_positions", "rope_theta", "tie_embeddings", "qkv_bias", "family"):
            assert getattr(got, field) == getattr(want, field), (kind, field)
        assert got.norm_eps == pytest.approx(want.norm_eps, rel=1e-6)


def test_a_loaded_gguf_saves_back_to_the_same_tensors_and_tokenizer(tmp_path):
    src = gf.gguf_of("qwen2", "q8_0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastdecode.load(src).save(tmp_path / "again.gguf", weights="q8_0")
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(str(tmp_path / "again.gguf"))
    for key in a.fields:
        if key.startswith("tokenizer."):
            assert b.fields[key].contents() == a.fields[key].contents(), key
    tb = {t.name: t for t in b.tensors}
    for t in a.tensors:
        assert tb[t.name].tensor_type == t.tensor_type, t.name
        np.testing.assert_array_equal(np.asarray(tb[t.name].data), np.asarray(t.data), err_msg=t.name)


def test_convert_command_and_generate_from_the_file(tmp_path):
    directory = mc.checkpoint("llama-gqa-tied")
    out = tmp_path / "m.gguf"
    run = [sys.executable, "-m", "fastdecode"]
    done = subprocess.run(run + ["convert", directory, str(out), "--weights", "f32"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    gen = subprocess.run(run + ["generate", "-m", str(out), "Hello world", "-n", "8", "--greedy", "--json"],
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    ids = json.loads(gen.stdout)["token_ids"]
    model = fastdecode.load(directory)
    assert ids == model.generate("Hello world", max_new_tokens=8, do_sample=False).token_ids
    bad = subprocess.run(run + ["convert", directory, str(out), "--weights", "q3_k"], capture_output=True, text=True)
    assert bad.returncode == 2 and "q3_k" in bad.stderr


# ---------------------------------------------------------------------------
# Tokenizers: tokenizer.ggml.* -> tokenizers.Tokenizer, same ids as tokenizer.json
# ---------------------------------------------------------------------------

def round_trip(directory, tmp_path):
    model = fastdecode.load(directory)
    path = tmp_path / "tok.gguf"
    model.save(path)
    return model.tokenizer, fastdecode.load(path)


@pytest.mark.parametrize("name", ["gpt2-bpe", "spm", "llama-bpe", "qwen2"])
def test_tokenizer_round_trip_gives_the_tokenizer_json_ids(name, tmp_path):
    directory = mc.checkpoint("llama-gqa-tied") if name == "gpt2-bpe" else gf.checkpoint_with_tokenizer(name)
    want, model = round_trip(directory, tmp_path)
    pre = {"gpt2-bpe": "gpt-2", "spm": None, "llama-bpe": "llama-bpe", "qwen2": "qwen2"}[name]
    assert model.gguf_tokenizer_fields.get("tokenizer.ggml.pre", (None,))[0] == pre
    for text in TEXTS:
        assert model.tokenizer.encode(text) == want.encode(text), (name, text)
        ids = want.encode(text)
        assert model.tokenizer.decode(ids) == want.decode(ids), (name, text)


def test_spm_tokenizer_keeps_bos_byte_fallback_and_chat_template(tmp_path):
    _, model = round_trip(gf.checkpoint_with_tokenizer("spm"), tmp_path)
    tok = model.tokenizer
    ids = tok.encode("東京 🦙")
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2
    vocab = tok._tok.get_vocab()
    assert any(vocab.get(f"<0x{b:02X}>") == i for i in ids for b in "🦙".encode())  # byte fallback
    assert tok.decode(ids) == "東京 🦙"
    assert "[{{ m['role'] }}]" in tok.chat_template
    fields = model.gguf_tokenizer_fields
    assert fields["tokenizer.ggml.model"][0] == "llama"
    types = fields["tokenizer.ggml.token_type"][0]
    assert types[1] == gt.CONTROL and types[0] == gt.UNKNOWN and types[3] == gt.BYTE


def test_control_tokens_are_never_made_from_plain_text(tmp_path):
    _, model = round_trip(mc.checkpoint("llama-gqa-tied"), tmp_path)
    tok = model.tokenizer
    eos = tok.eos_token_id
    plain = "<|endoftext" + "|" + ">"  # the control token's text only where the text spells it whole
    assert eos in tok.encode(plain) and eos not in tok.encode("<|endoftext |>  endoftext")
    assert tok.decode(tok.encode("a" + plain + "b")) == "ab"


def test_pre_tokenizer_regexes_follow_llama_cpp():
    assert set(gt.PRE_TOKENIZERS) >= {"default", "gpt-2", "llama-bpe", "qwen2"}
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"]}
    tok, info = gt.build({**base, "tokenizer.ggml.pre": "gpt-2"})
    assert tok.encode("ab ab").ids == [2, 2] or tok.token_to_id("Ġ") is None
    assert not info["add_bos"]
    with pytest.raises(ValueError, match="'nonesuch'"):
        gt.build({**base, "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(ValueError, match="'wordpiece'"):
        gt.build({**base, "tokenizer.ggml.model": "wordpiece"})
    with pytest.raises(ValueError, match="tokenizer.ggml.merges"):
        gt.build({k: v for k, v in base.items() if k != "tokenizer.ggml.merges"})


LLAMA_CPP_VOCABS = os.environ.get("FASTDECODE_LLAMA_CPP_VOCABS")


@pytest.mark.skipif(not LLAMA_CPP_VOCABS, reason="set FASTDECODE_LLAMA_CPP_VOCABS to llama.cpp's models/ directory "
                    "(its ggml-vocab-*.gguf files and their .inp/.out test vectors)")
@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "llama-spm"])
def test_llama_cpp_vocab_test_vectors(name):
    """llama.cpp's own tokenizer tests (tests/test-tokenizer-0): its ids for each text."""
    path = os.path.join(LLAMA_CPP_VOCABS, f"ggml-vocab-{name}.gguf")
    tok, _ = gt.build(fd_gguf.metadata(fd_gguf.open_reader(path)))
    with open(path + ".inp", encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    with open(path + ".out", encoding="utf-8") as f:
        wants = f.read().split("\n")
    for text, want in zip(texts, wants):
        assert tok.encode(text, add_special_tokens=False).ids == [int(i) for i in want.split()], text


# ---------------------------------------------------------------------------
# Bad input: a ValueError naming the key or tensor, before any kernel runs
# ---------------------------------------------------------------------------

def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_truncated_files_are_value_errors(tmp_path):
    src = gf.gguf_of("gpt2")
    data = file_bytes(src)
    for cut in (0, 3, 10, 100, len(data) // 3, len(data) - 1000, len(data) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="GGUF|truncated|runs past"):
            fastdecode.load(path)
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError, match="'output_norm|blk|token_embd|position_embd"):
        fastdecode.load(path)


def test_a_tensor_longer_than_its_bytes_is_named(tmp_path):
    src = gf.gguf_of("llama-gqa-tied")

    def grow(data):
        rec = gf.tensor_record(bytes(data), "blk.0.attn_q.weight")
        struct.pack_into("<Q", data, rec["dims"] + 8, 64 * 3)  # 3x the rows its bytes hold
    with pytest.raises(ValueError, match="blk.0.attn_q.weight"):
        fastdecode.load(gf.patched(src, str(tmp_path / "grown.gguf"), grow))


def test_an_offset_past_the_end_is_named(tmp_path):
    src = gf.gguf_of("llama-gqa-tied")

    def move(data):
        rec = gf.tensor_record(bytes(data), "blk.1.ffn_down.weight")
        struct.pack_into("<Q", data, rec["offset"], 1 << 40)
    with pytest.raises(ValueError, match="blk.1.ffn_down.weight.*past the end"):
        fastdecode.load(gf.patched(src, str(tmp_path / "moved.gguf"), move))


@pytest.mark.parametrize("type_id,match", [(99, "unknown GGML type 99"), (24, "I8|shape|type")])
def test_unsupported_types_are_named(tmp_path, type_id, match):
    src = gf.gguf_of("llama-gqa-tied")

    def retype(data):
        struct.pack_into("<I", data, gf.tensor_record(bytes(data), "blk.0.attn_v.weight")["type"], type_id)
    with pytest.raises(ValueError, match=match):
        fastdecode.load(gf.patched(src, str(tmp_path / "t.gguf"), retype))


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                                 "general.architecture", "tokenizer.ggml.merges"])
def test_a_missing_required_key_is_named(tmp_path, key):
    path = gf.rewrite(gf.gguf_of("llama-gqa-tied"), str(tmp_path / "k.gguf"), drop_keys=(key,))
    if key == "general.architecture":  # the writer always writes it: blank it out instead
        path = gf.rewrite(gf.gguf_of("llama-gqa-tied"), str(tmp_path / "k.gguf"),
                          set_keys={"general.architecture": "falcon"})
        key = "falcon"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        fastdecode.load(path)


def test_unknown_pre_tokenizer_in_a_file_is_named(tmp_path):
    path = gf.rewrite(gf.gguf_of("gpt2"), str(tmp_path / "p.gguf"), set_keys={"tokenizer.ggml.pre": "mystery-pre"})
    with pytest.raises(ValueError, match="mystery-pre"):
        fastdecode.load(path)


def test_not_a_gguf_and_a_bad_weights_name(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGML" + b"\0" * 100)
    with pytest.raises(ValueError, match="not a GGUF"):
        fastdecode.load(fake)
    model = fastdecode.load(mc.checkpoint("gpt2"))
    with pytest.raises(ValueError, match="q3_k"):
        model.save(tmp_path / "x.gguf", weights="q3_k")
