"""The side-by-side peer benchmark (bench/peers.py) runs on the tiny test
checkpoints, a few tokens per run: the files each peer reads are made by
its own converter (GGUF by fastdecode's writer), every contender runs in a
process of its own and makes exactly the tokens asked, and the table and
JSON have one line per comparison. Speed itself is never asserted here.

Each peer's test skips, naming the peer, when that peer is not installed
in the interpreter that runs it (llama.cpp: $FASTDECODE_PEER_PYTHON_LLAMA_CPP
may name another interpreter, e.g. one where llama-cpp-python is built)."""
import json
import os

import pytest

import model_checkpoints as mc
from conftest import HAVE_C
from fastdecode.benchmarks import peers, peers_files

pytestmark = pytest.mark.skipif(not HAVE_C, reason="the benchmark times fastdecode's C backend")
NEW = 6
MODELS = {"gpt2-tiny": "gpt2", "llama-tiny": "llama-gqa-tied"}


def need(engine):
    """The interpreter that runs `engine`; skips the test, naming the peer, when it lacks it."""
    python = peers.peer_pythons()[engine]
    why = peers.missing(engine, python)
    if why:
        pytest.skip(f"{engine} is the peer here and it is {why}")
    return python


def run(groups, models, tmp_path, rounds=2, long_prompt=0):
    return peers.run({m: mc.checkpoint(MODELS[m]) for m in models}, [1], rounds, NEW, long_prompt,
                     peers.peer_pythons(), str(tmp_path), groups)


def check_rows(rows, rounds):
    for r in rows:
        assert r["status"] == "ok", (r["contender"], r["status"])
        assert len(r["rounds"]) == rounds
        for x in r["rounds"]:
            assert len(x["ids"]) == NEW and x["n_one"] == 1, r["contender"]  # exactly the tokens asked
            assert x["full_s"] > 0 and x["one_s"] > 0
            assert x["decode_tokens_per_s"] is None or x["decode_tokens_per_s"] > 0


@pytest.mark.parametrize("engine, fmt, peer_fmt, models", [
    ("llama.cpp", "q4_k_m", "q4_k_m", ["gpt2-tiny", "llama-tiny"]),
    ("llama.cpp", "bf16", "f16", ["llama-tiny"]),
    ("ctranslate2", "q8_0", "int8", ["gpt2-tiny", "llama-tiny"]),
    ("onnxruntime-genai", "q4_0", "int4", ["llama-tiny"]),
    ("transformers", "float32", "float32", ["llama-tiny"]),
])
def test_each_peer_runs_in_its_own_process_and_makes_the_tokens_asked(engine, fmt, peer_fmt, models, tmp_path):
    need(engine)
    groups = (("float32", ()), (fmt, ((engine, peer_fmt),)))  # float32: the greedy tokens' reference
    rows = run(groups, models, tmp_path, long_prompt=24 if engine == "llama.cpp" else 0)
    assert {(r["model"], r["engine"], r["format"]) for r in rows} == \
        {(m, e, f) for m in models for e, f in (("fastdecode", "float32"), ("fastdecode", fmt), (engine, peer_fmt))}
    check_rows(rows, rounds=2)
    for r in rows:
        assert all(0 <= x["same_tokens_as_fastdecode_float32"] <= NEW for x in r["rounds"])
        if r["format"] == "float32":  # float32 against float32: the same greedy tokens (tiny random models
            assert r["rounds"][0]["same_tokens_as_fastdecode_float32"] >= 1  # may part later at a near-tie)
    comps = peers.comparisons(rows, groups)
    assert [(c["model"], c["peer"]) for c in comps] == [(m, peers.label((engine, peer_fmt))) for m in models]
    for c in comps:
        assert len(c["ratios"]) <= 2 and all(x > 0 for x in c["ratios"])
    table = peers.table(rows, groups, peers.l3_bytes())
    assert table.count("\n") == 1 + len(comps)
    if engine == "llama.cpp":
        ttft = peers.time_to_first_token(rows, groups)  # same format only: none for bf16 against f16
        assert [t["model"] for t in ttft] == (models if fmt == peer_fmt else [])
        assert all(t["status"] == "ok" and t["fastdecode_s"] > 0 and t["peer_s"] > 0 for t in ttft)
        assert all(x["ttft_s"] > 0 for r in rows for x in r["rounds"])
        assert all(x["perf"]["n_p_eval"] == peers.PROMPT_TOKENS and 1 <= x["perf"]["n_eval"] <= NEW
                   for r in rows if r["engine"] == "llama.cpp" for x in r["rounds"])  # timers of one run
        assert table.count("llama.cpp's own timer: ") == len(comps)


def test_a_missing_or_unsupported_peer_is_a_row_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(peers.ENGINES, "ctranslate2", ("no_such_module_fastdecode_test", "ctranslate2"))
    groups = (("q8_0", (("ctranslate2", "int8"), ("onnxruntime-genai", "int8"))),)
    rows = run(groups, ["gpt2-tiny"], tmp_path, rounds=1)
    status = {r["contender"]: r["status"] for r in rows}
    assert status["ctranslate2 int8"] == "not installed: ctranslate2"
    assert status["onnxruntime-genai int8"].startswith(("not supported: onnxruntime-genai's model builder has no gpt2",
                                                        "not installed: onnxruntime-genai"))
    check_rows([r for r in rows if r["engine"] == "fastdecode"], rounds=1)
    table = peers.table(rows, groups)
    assert "not installed: ctranslate2" in table and "onnxruntime-genai int8" in table  # never dropped


def test_main_writes_the_table_and_json(tmp_path, capsys):
    need("ctranslate2")
    out = tmp_path / "peers.json"
    assert peers.main(["--models", f"llama-tiny={mc.checkpoint('llama-gqa-tied')}", "--quick", "--threads", "1",
                       "--formats", "float32", "--engines", "ctranslate2", "--cache", str(tmp_path),
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| llama-tiny | 1 | fastdecode float32 | ctranslate2 float32 |" in printed
    assert "avx512_vnni" in printed and "Machine:" in printed
    assert "- llama-tiny ctranslate2 float32: ctranslate2 TransformersConverter float32" in printed
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "settings", "rows", "comparisons", "time_to_first_token"}
    assert data["settings"]["new_tokens"] == peers.QUICK_NEW_TOKENS
    assert [c["peer"] for c in data["comparisons"]] == ["ctranslate2 float32"]
    assert [len(x["ids"]) for r in data["rows"] for x in r["rounds"]] == [peers.QUICK_NEW_TOKENS] * 2
    assert [t["peer"] for t in data["time_to_first_token"]] == []  # llama.cpp not asked for
    assert "l3_bytes" in data["machine"] and isinstance(data["machine"]["simd_flags"], list)


def test_groups_are_the_issue_rows_and_selection_checks_names():
    assert dict(peers.GROUPS) == {
        "float32": (("llama.cpp", "f32"), ("ctranslate2", "float32"), ("transformers", "float32")),
        "bf16": (("llama.cpp", "f16"), ("llama.cpp", "bf16")),
        "q8_0": (("llama.cpp", "q8_0"), ("ctranslate2", "int8"), ("onnxruntime-genai", "int8")),
        "q4_0": (("llama.cpp", "q4_0"), ("onnxruntime-genai", "int4")),
        "q4_k_m": (("llama.cpp", "q4_k_m"), ("onnxruntime-genai", "int4")),
    }
    assert peers.select(["q8_0"], ["llama.cpp"]) == (("q8_0", (("llama.cpp", "q8_0"),)),)
    with pytest.raises(ValueError, match="unknown format.*q3_0"):
        peers.select(["q3_0"])
    with pytest.raises(ValueError, match="unknown engine.*vllm"):
        peers.select(None, ["vllm"])
    with pytest.raises(ValueError, match="ENGINE=PYTHON"):
        peers.peer_pythons(["nope=/usr/bin/python3"])
    assert peers.peer_pythons(["llama.cpp=/x/python"])["llama.cpp"] == "/x/python"


def test_the_synthetic_tokenizer_has_the_checkpoints_vocabulary_size(tmp_path):
    from tokenizers import Tokenizer

    peers_files.synthetic_tokenizer(str(tmp_path), 300, 0, 299)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 300
    assert tok.decode(tok.encode("hello, world").ids) == "hello, world"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok.token_to_id(config["eos_token"]) == 299 and tok.token_to_id(config["bos_token"]) == 0
    assert os.path.getsize(tmp_path / "tokenizer.json") > 0


def test_a_run_that_makes_other_than_the_tokens_asked_or_fails_is_an_error(tmp_path):
    short = tmp_path / "short-python"  # stands in for an engine's interpreter: one token where 6 were asked
    short.write_text('#!/bin/sh\necho \'{"ids": [7], "n_one": 1, "full_s": 0.2, "one_s": 0.1}\'\n')
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'Traceback: ImportError: no engine' >&2\nexit 1\n")
    for script in (short, broken):
        script.chmod(0o755)
    req = {"engine": "ctranslate2", "format": "int8", "new_tokens": NEW}
    with pytest.raises(RuntimeError, match="made 1 and 1 new tokens, asked for 6 and 1"):
        peers.run_worker(str(short), req, timeout=60)
    with pytest.raises(RuntimeError, match="(?s)ctranslate2 int8 worker failed \\(exit code 1\\).*no engine"):
        peers.run_worker(str(broken), req, timeout=60)


def test_time_to_first_token_pairs_the_same_format_and_skips_runs_without_it():
    def row(engine, fmt, ttft):
        rounds = [{"decode_tokens_per_s": 10.0, **({"ttft_s": ttft} if ttft else {})}]
        return {"model": "m", "threads": 1, "engine": engine, "format": fmt, "contender": f"{engine} {fmt}",
                "status": "ok", "rounds": rounds}

    groups = (("float32", (("llama.cpp", "f32"),)), ("q4_0", (("llama.cpp", "q4_0"),)))
    rows = [row("fastdecode", "float32", 0.5), row("llama.cpp", "f32", 1.0),
            row("fastdecode", "q4_0", None), row("llama.cpp", "q4_0", None)]
    [t] = peers.time_to_first_token(rows, groups)
    assert (t["fastdecode"], t["peer"], t["fastdecode_s"], t["peer_s"], t["ratios"]) == \
        ("fastdecode float32", "llama.cpp f32", 0.5, 1.0, [2.0])
    assert "| m | 1 | fastdecode float32 | llama.cpp f32 | 0.500 | 1.000 | 2.00x |" in peers.ttft_table(rows, groups)
