"""The end-to-end decode benchmark runs (tiny models, a few tokens): its rows,
table and target lines. Speed itself is never asserted here."""
import pytest

from conftest import HAVE_C
from fastdecode.benchmarks import decode


@pytest.fixture
def transformers():
    """The decode benchmark's peer (it builds its models, too); the test skips without it."""
    return pytest.importorskip("transformers", reason="the decode benchmark compares with transformers")


def test_decode_benchmark_runs_on_tiny_models(transformers, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MODELS", {
        "gpt2-tiny": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=2, vocab_size=32000)),
        "llama-tiny": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=64, vocab_size=32000)),
    })
    rows = decode.run(list(decode.MODELS), [1], rounds=1, new_tokens=4, cache_dir=str(tmp_path))
    assert {r["model"] for r in rows} == {"gpt2-tiny", "llama-tiny"}
    assert {r["contender"] for r in rows} >= {decode.PEER, "fastdecode-numpy"} | ({decode.BASELINE} if HAVE_C else set())
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["floor_s"] > 0 and r["read_gbps"] > 0
        assert r["weight_bytes_per_token"] > 32000 * 32 * 4  # at least the output head
    table = decode.table(rows)
    assert table.count("\n") == len(rows) + 1
    assert any("transformers tokens/s" in line for line in decode.targets(rows))
    assert (tmp_path / "gpt2-tiny" / "model.safetensors").exists()  # cached for the next run
    assert not list(tmp_path.glob("*.partial-*"))  # built aside, then moved into place


def test_transformers_worker_failure_names_the_cause(transformers, tmp_path):
    with pytest.raises(RuntimeError, match="worker process failed.*(?s:.*)Error"):
        decode.PeerProcess(str(tmp_path / "no-such-checkpoint"))

