"""Reliability of the model path: corrupt checkpoints are clear errors that
name the file, generate() does not leak, a model shared across threads gives
each thread the answers it would get alone."""
import gc
import os
import threading

import numpy as np
import pytest

import fastdecode
from model_checkpoints import build, checkpoint
from test_model_loading import copy_of, edit_config
from test_threads_leaks import rss_bytes


# ---------------------------------------------------------------------------
# Corrupt checkpoints
# ---------------------------------------------------------------------------

def truncate(name, keep):
    def breaks(directory):
        path = directory / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return breaks


CORRUPT = {  # what is wrong: (how, file the message must name)
    "safetensors cut to half": (truncate("model.safetensors", 0.5), "model.safetensors"),
    "safetensors cut inside its header": (truncate("model.safetensors", 0.0005), "model.safetensors"),
    "safetensors empty": (truncate("model.safetensors", 0.0), "model.safetensors"),
    "config lies about hidden_size": (lambda d: edit_config(d, hidden_size=96, n_embd=96), "model.safetensors"),
    "config lies about layers": (lambda d: edit_config(d, num_hidden_layers=5, n_layer=5), "has no tensor"),
    "config lies about vocab": (lambda d: edit_config(d, vocab_size=9999), "model.safetensors"),
    "tokenizer.json does not parse": (lambda d: (d / "tokenizer.json").write_text('{"model": [1, 2'), "tokenizer.json"),
    "tokenizer.json is not a tokenizer": (lambda d: (d / "tokenizer.json").write_text('{"a": 1}'), "tokenizer.json"),
    "config.json is a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json"),
    "config.json has negative sizes": (lambda d: edit_config(d, n_head=-4, num_attention_heads=-4), "config.json"),
}


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa-tied"])
@pytest.mark.parametrize("what", list(CORRUPT))
def test_corrupt_checkpoint_is_a_clear_error(what, kind, tmp_path):
    breaks, names = CORRUPT[what]
    target = copy_of(kind, tmp_path)
    breaks(target)
    with pytest.raises((ValueError, OSError)) as err:
        model = fastdecode.load(target)
        model.generate("Hello", max_new_tokens=2)  # a lie the loader cannot see must not pass silently
    assert names in str(err.value), f"{what}: {err.value!r}"


# ---------------------------------------------------------------------------
# generate() 1,000 times
# ---------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc")
def test_generate_does_not_leak():
    model = fastdecode.load(checkpoint("llama-gqa-tied"))
    for _ in range(50):  # warm-up
        model.generate("Hello", max_new_tokens=4, do_sample=True, top_k=5, rng=1)
    gc.collect()
    rss0 = rss_bytes()
    for i in range(1000):
        model.generate("Hello", max_new_tokens=4, do_sample=True, top_k=5, rng=i)
    gc.collect()
    grown = rss_bytes() - rss0
    assert grown < 1 << 20, f"RSS grew by {grown} bytes over 1,000 generate() calls"


# ---------------------------------------------------------------------------
# One model, many threads
# ---------------------------------------------------------------------------

def test_shared_model_across_threads(tmp_path):
    """generate() keeps its state (KV cache, positions) per call, so one model
    object serves concurrent threads; each gets its serial answer. The layers
    are wide enough (a 1024 x 2816 MLP: 2.9M multiply-adds per row, above
    linear.c's FD_LINEAR_PAR_MIN of 2^20) that every MLP matmul runs on the
    pool, with 4 threads, so the 8 callers contend for the same workers."""
    model = fastdecode.load(build("llama-gqa-tied", str(tmp_path / "wide"), hidden_size=1024,
                                  intermediate_size=2816, num_attention_heads=8, num_key_value_heads=2))
    before = fastdecode.get_num_threads()
    fastdecode.set_num_threads(4)
    try:
        _generate_from_8_threads(model)
    finally:
        fastdecode.set_num_threads(before)


def run_threads(work, n: int = 8) -> list:
    """Run work(i) for i < n on n threads at once; the exceptions they raised."""
    errors = []

    def guarded(i):
        try:
            work(i)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _generate_from_8_threads(model):
    prompts = ["Hello world", "The quick brown fox", "def main():", "Déjà vu"]
    serial = {p: model.generate(p, max_new_tokens=12, do_sample=True, top_p=0.9, rng=3).token_ids
              for p in prompts}
    results = []
    start = threading.Barrier(8)

    def worker(i):
        start.wait()
        for _ in range(3):
            p = prompts[i % len(prompts)]
            results.append((p, model.generate(p, max_new_tokens=12, do_sample=True, top_p=0.9, rng=3).token_ids))

    errors = run_threads(worker)
    assert not errors, errors
    assert len(results) == 24
    for p, ids in results:
        assert ids == serial[p], p


def test_weights_are_read_only():
    """Shared reads are safe because nothing can write to the weights."""
    model = fastdecode.load(checkpoint("gpt2"))
    arrays = [a for a in vars(model.weights).values() if isinstance(a, np.ndarray)]
    layers = getattr(model.weights, "layers", [])
    for layer in layers:
        arrays += [a for a in vars(layer).values() if isinstance(a, np.ndarray)]
    assert arrays
    for a in arrays:
        with pytest.raises(ValueError):
            a.flat[0] = 1.0
