"""Issue 18's reports on loading checkpoints and on the command line, one
test (or more) per kind, each asserting the right value. Checkpoints are
tiny Llamas (tests/tiny_checkpoints.py)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastdecode
from fastdecode.model import ConfigError, ModelConfig, WeightError
from tiny_checkpoints import CONFIG, llama_tensors, tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fastdecode.load(tiny(tmp_path_factory.mktemp("tiny")))


# ---------------------------------------------------------------------------
# 5. a checkpoint that disagrees with its config
# ---------------------------------------------------------------------------

def test_unused_tensors_are_an_error_naming_them(tmp_path):
    path = tiny(tmp_path / "m", layers=4)  # config.json says 2 layers
    with pytest.raises(WeightError, match=r"18 tensor\(s\).*'model\.layers\.2\.input_layernorm\.weight'.*strict=False"):
        fastdecode.load(path)
    with pytest.warns(UserWarning, match=r"model\.layers\.2\..* and 10 more"):
        m = fastdecode.load(path, strict=False)
    assert m.config.num_layers == 2


def test_missing_tensors_are_an_error_naming_them(tmp_path):
    path = tiny(tmp_path / "m", config=dict(num_hidden_layers=3), layers=2)
    with pytest.raises(WeightError, match=r"model\.layers\.2\.input_layernorm\.weight"):
        fastdecode.load(path)


def test_a_bias_the_config_does_not_use_is_an_error(tmp_path):
    t = llama_tensors(CONFIG, 2)
    t["model.layers.0.self_attn.o_proj.bias"] = np.zeros(16, np.float32)
    with pytest.raises(WeightError, match=r"o_proj\.bias"):
        fastdecode.load(tiny(tmp_path / "m", tensors=t))


# ---------------------------------------------------------------------------
# 6. per-architecture defaults, as transformers' configuration classes
# ---------------------------------------------------------------------------

MODEL_TYPES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
               "MistralForCausalLM": "mistral"}
VARIANTS = [{}, dict(hidden_size=64, num_attention_heads=4, n_embd=64, n_head=4),
            dict(num_key_value_heads=None), dict(use_sliding_window=True), dict(sliding_window=None),
            dict(sliding_window=100, max_position_embeddings=50), dict(eos_token_id=[5, 6], n_inner=None)]


def hf_expected(hf, arch) -> dict:
    """What each ModelConfig field should be, read from a transformers config."""
    rope = getattr(hf, "rope_parameters", None) or {}
    d, heads = hf.hidden_size, hf.num_attention_heads
    window = None  # GPT-2 and Llama attend to everything
    if arch == "MistralForCausalLM" or (arch == "Qwen2ForCausalLM" and hf.use_sliding_window):
        window = hf.sliding_window
    eos = hf.eos_token_id
    common = dict(vocab_size=hf.vocab_size, hidden_size=d, num_layers=hf.num_hidden_layers, num_heads=heads,
                  bos_token_id=hf.bos_token_id, eos_token_ids=tuple([] if eos is None else eos if isinstance(eos, list)
                                                                  else [eos]),
                  max_positions=hf.max_position_embeddings if window is None else min(hf.max_position_embeddings,
                                                                                        window))
    if arch == "GPT2LMHeadModel":
        return dict(common, num_kv_heads=heads, head_dim=d // heads, intermediate_size=hf.n_inner or 4 * d,
                    norm_eps=hf.layer_norm_epsilon, activation=hf.activation_function,
                    tie_embeddings=hf.tie_word_embeddings)
    return dict(common, num_kv_heads=hf.num_key_value_heads or heads,
                head_dim=getattr(hf, "head_dim", None) or d // heads, intermediate_size=hf.intermediate_size,
                norm_eps=hf.rms_norm_eps, activation=hf.hidden_act, tie_embeddings=hf.tie_word_embeddings,
                rope_theta=rope.get("rope_theta", getattr(hf, "rope_theta", None)), sliding_window=window,
                mlp_bias=getattr(hf, "mlp_bias", False),
                qkv_bias=getattr(hf, "attention_bias", False) or arch == "Qwen2ForCausalLM")


@pytest.mark.parametrize("arch", MODEL_TYPES)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_missing_config_fields_take_transformers_defaults(tmp_path, arch, variant):
    transformers = pytest.importorskip("transformers", reason="the defaults are compared with transformers'")
    raw = {"architectures": [arch], "model_type": MODEL_TYPES[arch], **VARIANTS[variant]}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    try:
        hf = transformers.AutoConfig.from_pretrained(str(tmp_path))
    except Exception:  # transformers 5 refuses a null num_key_value_heads for Mistral; 4.x read it as heads
        assert arch == "MistralForCausalLM" and VARIANTS[variant] == dict(num_key_value_heads=None)
        c = ModelConfig.from_file(str(tmp_path / "config.json"))
        assert c.num_kv_heads == c.num_heads == 32
        return
    expected = hf_expected(hf, arch)
    if expected["num_heads"] % expected["num_kv_heads"]:  # transformers' defaults can contradict the file's
        with pytest.raises(ConfigError, match=f"num_attention_heads .* multiple of num_key_value_heads "
                                              f"\\({expected['num_kv_heads']}\\)"):
            ModelConfig.from_file(str(tmp_path / "config.json"))
        return
    ours = ModelConfig.from_file(str(tmp_path / "config.json"))
    assert {k: getattr(ours, k) for k in expected} == expected


def test_mistral_without_sliding_window_gets_4096():
    c = ModelConfig.from_dict(dict(CONFIG, architectures=["MistralForCausalLM"], model_type="mistral",
                                   max_position_embeddings=8192, num_key_value_heads=None))
    assert c.sliding_window == 4096 and c.max_positions == 4096
    c = ModelConfig.from_dict({"architectures": ["MistralForCausalLM"]})
    assert c.num_kv_heads == 8 and c.max_positions == 4096


# ---------------------------------------------------------------------------
# 7. undefined rates are null in the CLI's JSON
# ---------------------------------------------------------------------------

def strict_json(text):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "fastdecode", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_cli_json_with_one_token_has_null_rate(model):
    r = cli("generate", "x", "-n", "1", "--json", "-m", model.path)
    assert r.returncode == 0, r.stderr
    out = strict_json(r.stdout)
    assert out["generated_tokens"] == 1 and out["generated_tokens_per_s"] is None
    assert out["prompt_tokens_per_s"] > 0


# ---------------------------------------------------------------------------
# 10. config values checked at load, naming the file and field; CLI flags
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("eos_token_id", "x", "eos_token_id must be a token id or a list"),
    ("bos_token_id", -1, "bos_token_id must be a token id"),
    ("rms_norm_eps", "x", "rms_norm_eps must be a positive finite number; got 'x'"),
    ("rms_norm_eps", -1, "rms_norm_eps must be a positive finite number; got -1"),
    ("rope_theta", -1, "rope_theta must be a positive finite number; got -1"),
    ("rope_theta", 0, "rope_theta must be a positive"),
    ("vocab_size", "258", "vocab_size must be a positive integer; got '258'"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings must be true or false"),
    ("hidden_act", 3, "hidden_act must be a string"),
    ("rope_scaling", {"rope_type": "linear", "factor": -2}, "rope scaling's factor must be a positive"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4,
                      "original_max_position_embeddings": 16}, "llama3 rope scaling's high_freq_factor .* must exceed"),
])
def test_config_values_are_checked_at_load_naming_file_and_field(tmp_path, field, value, match):
    path = tiny(tmp_path / "m", config={field: value})
    with pytest.raises(ConfigError, match=r"config\.json: " + match):
        fastdecode.load(path)


def test_cli_bad_number_names_the_flag(model):
    r = cli("generate", "x", "-n", "abc", "-m", model.path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "fastdecode generate: error: argument -n/--max-new-tokens: must be a positive integer; got 'abc'"
    r = cli("generate", "x", "--top-p", "lots", "-m", model.path)
    assert r.returncode == 2 and "argument --top-p: must lie in (0, 1]; got lots" in r.stderr


# ---------------------------------------------------------------------------
# 11. every load error reaches the CLI as one line, exit 2
# ---------------------------------------------------------------------------

def _break_index(d):
    os.replace(d / "model.safetensors", d / "shard.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": []}))


@pytest.mark.parametrize("damage, needle", [
    (_break_index, "'weight_map' must be an object"),
    (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": 5}}'), "'weight_map' must be"),
    (lambda d: (d / "model.safetensors.index.json").write_text("[1]"), "not a safetensors index"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
     "not a readable safetensors file"),
    (lambda d: (d / "config.json").write_text("[]"), "config.json must hold a JSON object"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "not a readable tokenizer.json"),
    (lambda d: (d / "generation_config.json").write_text('{"temperature": -1}'), "temperature must be >= 0"),
])
def test_cli_load_errors_are_one_line(tmp_path, damage, needle):
    d = tmp_path / "m"
    tiny(d)
    damage(d)
    r = cli("generate", "x", "-n", "2", "-m", str(d))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr and r.stdout == ""


# ---------------------------------------------------------------------------
# 12. the CLI validates before it streams
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--top-k", "-3"], "top_k must be >= 0"),
    (["-n", "500"], "the model takes at most 64"),
])
def test_cli_errors_come_before_the_prompt_is_echoed(model, args, needle):
    r = cli("generate", "hello", "-m", model.path, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("fastdecode: error: ") and needle in r.stderr


# ---------------------------------------------------------------------------
# 14. --version, | head, Ctrl-C
# ---------------------------------------------------------------------------

def test_cli_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastdecode {fastdecode.__version__}"


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    """A checkpoint that talks for long: no eos anywhere, a long context."""
    return tiny(tmp_path_factory.mktemp("endless"), config=dict(eos_token_id=None, bos_token_id=None,
                                                                  max_position_embeddings=100_000))


def test_cli_output_closed_early_exits_quietly(endless):
    err_file = os.path.join(endless, "err.txt")
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m fastdecode generate hello -n 20000 --greedy '
                                      f'-m "{endless}" 2>"$ERR" | head -c 20; echo; echo "rc=${{PIPESTATUS[0]}}"'],
                       capture_output=True, timeout=300, env=dict(os.environ, ERR=err_file))
    err = open(err_file).read()
    assert r.stdout.startswith(b"hello") and r.stdout.rstrip().endswith(b"rc=0"), (r.stdout, err)
    assert err == ""


def test_cli_ctrl_c_ends_the_line_and_exits_130(endless):
    proc = subprocess.Popen([sys.executable, "-m", "fastdecode", "generate", "hello", "-n", "20000", "--greedy",
                             "-m", endless], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # SIGINT as a shell starts it, whatever ran pytest (a background job ignores it)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        got = b""
        while len(got) < len("hello") + 5:  # the prompt, then generated text: the loop is running
            chunk = os.read(proc.stdout.fileno(), 64)
            assert chunk, proc.stderr.read()
            got += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert (got + rest).endswith(b"\n") and b"Traceback" not in err


# ---------------------------------------------------------------------------
# 15. bench checks its optional dependencies first
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("missing, args, needle", [
    ("matplotlib", ["--kernels", "softmax", "--plot", "x.png"], "--plot needs matplotlib: pip install 'fastdecode[bench]'"),
    ("torch", ["--kernels", "decode"], "pip install 'fastdecode[bench]'"),
])
def test_bench_checks_optional_dependencies_before_running(tmp_path, missing, args, needle):
    (tmp_path / f"{missing}.py").write_text(f"raise ImportError(\"No module named '{missing}'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               FASTDECODE_BENCH_CACHE=str(tmp_path / "cache"))
    r = cli("bench", "--quick", "--threads", "1", "--rounds", "1", *args, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert "benchmarks" not in r.stderr and r.stdout == ""  # nothing ran


