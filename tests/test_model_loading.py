"""Loading checkpoints: shards, float16/bfloat16 files, the packaged default,
and clear errors naming the file or tensor that is wrong."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fastdecode
from fastdecode import model as fd_model
from fastdecode.model import ConfigError, WeightError
from model_checkpoints import build, checkpoint, hf_logits, hf_model, prompt_ids, to_bfloat16_bits


def copy_of(kind, tmp_path):
    target = tmp_path / kind
    shutil.copytree(checkpoint(kind), target)
    return target


def edit_tensors(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def prompt_logits(model, ids):
    return model.forward(np.array([ids]), model.new_cache(1, len(ids)), all_logits=True)[0]


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fastdecode.load(tmp_path / "nowhere")


def remove(name):
    return lambda d: os.remove(d / name)


def pop_tensor(name):
    return lambda d: edit_tensors(d, lambda t: t.pop(name))


K_PROJ = "model.layers.1.self_attn.k_proj.weight"
BROKEN = {  # what is broken: (checkpoint, how, error, what the message must name)
    "no config.json": ("gpt2", remove("config.json"), FileNotFoundError, "config.json"),
    "config.json not JSON": ("gpt2", lambda d: (d / "config.json").write_text("{not json"), ConfigError,
                             "config.json"),
    "unsupported architecture": ("gpt2", lambda d: edit_config(d, architectures=["BertForMaskedLM"],
                                                               model_type="bert"), ConfigError, "BertForMaskedLM"),
    "unsupported rope scaling": ("llama-gqa-tied", lambda d: edit_config(d, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}), ConfigError, "yarn"),
    "no weights file": ("gpt2", remove("model.safetensors"), FileNotFoundError, "model.safetensors"),
    "tensor of the wrong shape": ("llama-gqa-tied", lambda d: edit_tensors(d, lambda t: t.update(
        {K_PROJ: t[K_PROJ][:-1]})), WeightError, r"model\.safetensors.*k_proj\.weight.*shape"),
    "missing tensor": ("gpt2", pop_tensor("transformer.h.0.mlp.c_fc.bias"), WeightError, r"h\.0\.mlp\.c_fc\.bias"),
    "untied model without a head": ("llama3-untied", pop_tensor("lm_head.weight"), WeightError, "lm_head.weight"),
    "tensor of an unsupported dtype": ("gpt2", lambda d: edit_tensors(d, lambda t: t.update(
        {"transformer.ln_f.bias": t["transformer.ln_f.bias"].astype(np.int32)})), WeightError, r"ln_f\.bias.*I32"),
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_broken_checkpoint_is_a_clear_error(what, tmp_path):
    kind, breaks, error, match = BROKEN[what]
    target = copy_of(kind, tmp_path)
    breaks(target)
    with pytest.raises(error, match=match):
        fastdecode.load(target)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sharded")
    source = checkpoint("llama3-untied")
    tensors = load_file(os.path.join(source, "model.safetensors"))
    names = sorted(tensors)
    parts = [names[i::4] for i in range(4)]  # 4 shards, as save_pretrained(max_shard_size=...) writes them
    weight_map = {}
    for i, part in enumerate(parts):
        file = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.nbytes for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(source, name), directory)
    return directory


def test_sharded_checkpoint_loads_like_single_file(sharded):
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    ids = prompt_ids(9)
    single = fastdecode.load(checkpoint("llama3-untied"))
    np.testing.assert_array_equal(prompt_logits(fastdecode.load(sharded), ids), prompt_logits(single, ids))


def test_missing_shard_names_it(sharded, tmp_path):
    target = tmp_path / "s"
    shutil.copytree(sharded, target)
    victim = sorted(target.glob("model-*.safetensors"))[1]
    os.remove(victim)
    with pytest.raises(FileNotFoundError, match=victim.name):
        fastdecode.load(target)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_compute_in_float32(dtype):
    directory = checkpoint("llama-gqa-tied", dtype)
    hf = hf_model(directory)  # float32 holding the rounded weights
    with open(os.path.join(directory, "config.json")) as f:
        assert json.load(f)["dtype"] == dtype
    model = fastdecode.load(directory)
    assert model.weights.head.dtype == model.weights.layers[0].qkv.dtype == np.float32
    ids = prompt_ids(11)
    got, want = prompt_logits(model, ids), hf_logits(hf, ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_bfloat16_conversion_is_exact():
    """bfloat16 is the top half of a float32: the conversion is exact, zeros'
    signs, subnormals and infinities included."""
    values = np.array([0.0, -0.0, 1.0, -2.5, 3.0e38, 1e-40, np.inf, -np.inf], np.float32)
    bits = np.concatenate([to_bfloat16_bits(values[:-2]), [0x7F80, 0xFF80]]).astype(np.uint16)
    got = fd_model.weights.bf16_to_f32(bits)
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(got[:4], values[:4])  # exactly representable
    assert got.dtype == np.float32


def test_default_model_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(fd_model, "DEFAULT_MODEL_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="default model"):
        fastdecode.load("default")
    monkeypatch.setattr(fd_model, "DEFAULT_MODEL_DIR", checkpoint("gpt2"))
    assert fastdecode.load("default").config.architecture == "GPT2LMHeadModel"


def test_default_model_directory_is_inside_the_package():
    package = os.path.dirname(fastdecode.__file__)
    assert fd_model.DEFAULT_MODEL_DIR == os.path.join(package, "models", "default")


def test_mistral_sliding_window_caps_the_context(tmp_path):
    directory = tmp_path / "mistral-window"
    build("mistral", str(directory), sliding_window=16)
    model = fastdecode.load(directory)
    assert model.config.max_positions == 16
    with pytest.raises(ValueError, match="16"):
        model.generate(prompt_ids(10), max_new_tokens=8)


def test_generation_config_supplies_eos_and_sampling_defaults(tmp_path):
    target = copy_of("gpt2", tmp_path)
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 5], "top_k": 3}))
    model = fastdecode.load(target)
    assert model.eos_token_ids == (0, 5)
    assert model.generation_defaults == {"top_k": 3}


def test_import_fastdecode_does_not_load_the_model_stack():
    import subprocess
    import sys

    code = ("import sys, fastdecode; heavy = [m for m in ('fastdecode.model', 'fastdecode.generation', "
            "'tokenizers', 'safetensors', 'torch') if m in sys.modules]; print(heavy); "
            "fastdecode.load; print('fastdecode.model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"
