"""Issue 18's reports on generation, loading and the CLI, one test (or more)
per kind, each asserting the right value. Models here are tiny Llamas
written with NumPy and safetensors, with a byte-level tokenizer that has no
merges (every byte is a token, so a 4-byte character is 4 tokens) and two
special tokens; a logits processor scripts what the model says."""
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastdecode
from fastdecode import backend as fd_backend
from fastdecode.generation import GenerationConfig, Timing
from fastdecode.model import ConfigError, ModelConfig, WeightError
from fastdecode.tokenizer import TextStream, Tokenizer

EOS, IM_END = "<|endoftext|>", "<|im_end|>"
SMILE = "🙂"  # 4 bytes in UTF-8


# ---------------------------------------------------------------------------
# A tiny checkpoint
# ---------------------------------------------------------------------------

def write_tokenizer(directory):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, IM_END])  # ids 256, 257
    tok.save(os.path.join(directory, "tokenizer.json"))


CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=258, hidden_size=16,
              intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=256,
              eos_token_id=256, rope_theta=10000.0)


def llama_tensors(c: dict, layers: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    hq, hkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": np.ones(d, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                  p + "self_attn.q_proj.weight": w(hq, d), p + "self_attn.k_proj.weight": w(hkv, d),
                  p + "self_attn.v_proj.weight": w(hkv, d), p + "self_attn.o_proj.weight": w(d, hq),
                  p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
    return t


def tiny(directory, config=None, layers=None, tensors=None, generation_config=None):
    """Write a tiny Llama checkpoint (+ tokenizer) to `directory`; return its path."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    c = dict(CONFIG, **(config or {}))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(c, f)
    full = dict(CONFIG, **{k: v for k, v in (config or {}).items() if isinstance(v, int) and not isinstance(v, bool)
                           and k in CONFIG and v > 0})
    save_file(tensors if tensors is not None else llama_tensors(full, layers or full["num_hidden_layers"]),
              os.path.join(directory, "model.safetensors"))
    write_tokenizer(directory)
    if generation_config is not None:
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            json.dump(generation_config, f)
    return str(directory)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fastdecode.load(tiny(tmp_path_factory.mktemp("tiny")))


def ids(model, text):
    return model.tokenizer.encode(text)


def script(model, prompt_len, *parts):
    """A logits processor that makes the model say `parts` (texts, or token ids) in order."""
    wanted = [t for p in parts for t in (ids(model, p) if isinstance(p, str) else [p])]

    def say(history, logits):
        out = np.full_like(logits, -np.inf)
        step = history.shape[1] - prompt_len
        out[:, wanted[min(step, len(wanted) - 1)]] = 0.0
        return out

    return say, len(wanted)


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


def test_stop_string_spanning_text_and_a_special_token(model):
    prompt = ids(model, "Say:")
    say, n = script(model, len(prompt), "Hi end", 257, " more")
    out = model.generate(prompt, max_new_tokens=n, stop=["end" + IM_END], logits_processors=[say])
    assert out.text == "Hi " and out.finish_reason == "stop" and out.token_ids[-1] == 257


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
# 7. undefined rates are null in JSON
# ---------------------------------------------------------------------------

def test_undefined_rates_are_none():
    t = Timing(prompt_tokens=3, prefill_s=0.01, generated_tokens=1, decode_s=0.0)
    assert t.generated_tokens_per_s is None and t.prompt_tokens_per_s == pytest.approx(300)
    assert Timing(3, 0.0, 2, 0.1).prompt_tokens_per_s is None


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
                             "-m", endless], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    t0 = time.perf_counter()
    r = cli("bench", "--quick", "--threads", "1", "--rounds", "1", *args, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert "benchmarks" not in r.stderr and r.stdout == ""  # nothing ran
    assert time.perf_counter() - t0 < 60


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
