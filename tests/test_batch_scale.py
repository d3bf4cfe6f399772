"""Scale-out: Ray Data (local cluster, 2 CPUs) and Dask (LocalCluster, 2
workers) give each row the tokens of a serial run, whatever the split, and
every row exactly once, even when an actor dies in mid-run."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from fastdecode.batch_io import Predictor
from model_checkpoints import checkpoint, prompt_ids

pd = pytest.importorskip("pandas", reason="the Ray and Dask adapters exchange pandas/Arrow tables")


@pytest.fixture(scope="module")
def model_dir():
    return checkpoint("llama-gqa-tied")


def prompts_frame(n=64):
    gen = np.random.default_rng(4)
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(n)],
        "prompt": [" ".join(["Hello world", "café 東京", "def main():"][i % 3] for _ in range(1 + i % 7)) for i in range(n)],
        "max_new_tokens": gen.integers(4, 40, n),
        "do_sample": [bool(i % 2) for i in range(n)],
    })


def by_id(frame):
    return {row.id: (row.generated_text, [int(t) for t in row.token_ids], row.finish_reason)
            for row in frame.itertuples()}


@pytest.fixture(scope="module")
def serial(model_dir):
    frame = prompts_frame()
    return by_id(Predictor(model_dir, id_column="id", seed=9, max_batch=1)(frame))


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (fastdecode[ray])")
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


def blocks(ray, frame, n=8):
    """A dataset of n blocks made in the driver (a repartition task could wait forever for a CPU the actors hold)."""
    return ray.data.from_pandas([frame.iloc[i::n] for i in range(n)])


class DiesOnce(Predictor):
    """Kills its own process (SIGKILL) on its first batch, once per test: a lost actor."""

    def __init__(self, *args, marker, **kw):
        super().__init__(*args, **kw)
        self.marker = marker

    def __call__(self, table):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return super().__call__(table)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def test_predictor_is_independent_of_the_split(model_dir, serial):
    frame = prompts_frame()
    parts = [Predictor(model_dir, id_column="id", seed=9, max_batch=5)(frame.iloc[i:i + 13]) for i in range(0, 64, 13)]
    assert by_id(pd.concat(parts)) == serial
    as_numpy = Predictor(model_dir, id_column="id", seed=9)({k: frame[k].to_numpy() for k in frame.columns})
    assert set(as_numpy) >= {"generated_text", "token_ids", "error"} and list(as_numpy["id"]) == list(frame["id"])
    rows = Predictor(model_dir, id_column="id", seed=9)(frame.to_dict("records"))  # a dask Bag partition
    assert {r["id"]: (r["generated_text"], r["token_ids"], r["finish_reason"]) for r in rows} == serial


def test_forget_models_makes_the_next_batch_load_afresh(model_dir):
    from fastdecode import batch_io

    predictor = Predictor(model_dir, max_new_tokens=2)
    predictor(pd.DataFrame({"prompt": ["Hello"]}))
    loaded = batch_io._MODELS[(model_dir, None)]
    predictor(pd.DataFrame({"prompt": ["Hello"]}))
    assert batch_io._MODELS[(model_dir, None)] is loaded  # once per process
    batch_io.forget_models()
    assert not batch_io._MODELS
    out = predictor(pd.DataFrame({"prompt": ["Hello"]}))
    assert out["generated_tokens"][0] == 2 and batch_io._MODELS[(model_dir, None)] is not loaded


def test_batch_cli_on_ray_gives_every_actor_rows():
    """`fastdecode batch --ray`: 4 x max_batch rows a call, but never more than an even share per actor."""
    from fastdecode.ray import _batch_size

    assert _batch_size(10_000, 2, 16) == 64
    assert _batch_size(256, 2, 64) == 128  # not 256: one call for one actor, none for the other
    assert _batch_size(5, 4, 16) == 2 and _batch_size(1, 8, 16) == 1


def test_predictor_reports_bad_rows(model_dir):
    frame = pd.DataFrame({"prompt": ["fine", "too long " * 200], "max_new_tokens": [3, 3]})
    out = Predictor(model_dir)(frame)
    assert pd.isna(out["error"][0]) and out["generated_tokens"][0] == 3  # pandas shows None as a missing value
    assert "positions" in out["error"][1] and pd.isna(out["generated_text"][1])
    with pytest.raises(ValueError, match="no column 'text'"):
        Predictor(model_dir, column="text")(frame)


def test_predictor_renders_messages(tmp_path):
    """A cell holding a conversation is answered as model.chat answers it; one without a template is an error row."""
    import fastdecode
    from chat_checkpoints import chat_checkpoint

    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "a"},
                                                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]]
    frame = pd.DataFrame({"messages": chats, "seed": [1, 2]})
    out = Predictor(chat_checkpoint(), column="messages", max_new_tokens=12, do_sample=True)(frame)
    m = fastdecode.load(chat_checkpoint(), prefix_cache_mb=0)
    for i, messages in enumerate(chats):
        w = m.chat(messages, max_new_tokens=12, do_sample=True, rng=i + 1)
        assert (out["generated_text"][i], list(out["token_ids"][i])) == (w.text, w.token_ids)
    jsonl = pd.DataFrame({"line": [json.dumps({"messages": chats[0]})]})
    bad = Predictor(checkpoint("llama-gqa-tied"), column="line", jsonl=True)(jsonl)
    assert "no chat template" in bad["error"][0] and pd.isna(bad["generated_text"][0])


def test_ray_equals_serial(ray_local, model_dir, serial):
    import fastdecode.ray

    ds = blocks(ray_local, prompts_frame())
    out = fastdecode.ray.generate(ds, model=model_dir, id_column="id", seed=9, concurrency=2, num_cpus=1,
                                  batch_size=8).to_pandas()
    got = by_id(out)
    assert len(out) == 64 and sorted(got) == sorted(serial)
    assert {k: v for k, v in got.items() if v != serial[k]} == {}


def test_ray_actor_killed_mid_run_loses_nothing(ray_local, model_dir, serial, tmp_path):
    from ray import cloudpickle

    import fastdecode.ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    ds = blocks(ray_local, prompts_frame())
    out = ds.map_batches(DiesOnce, fn_constructor_kwargs=dict(model=model_dir, id_column="id", seed=9,
                                                               marker=str(tmp_path / "died")),
                         batch_size=8, batch_format="numpy", concurrency=2, num_cpus=1, max_restarts=-1,
                         max_task_retries=-1).to_pandas()
    assert (tmp_path / "died").exists()  # an actor did die
    assert len(out) == 64 and sorted(out["id"]) == sorted(serial) and by_id(out) == serial
    assert fastdecode.ray.Predictor is Predictor


def test_batch_cli_on_ray(ray_local, model_dir, serial, tmp_path):
    """`fastdecode batch --ray` (a local cluster of its own) writes what the in-process job writes."""
    frame = prompts_frame(24)
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for row in frame.itertuples():
            f.write(json.dumps({"id": row.id, "prompt": row.prompt, "max_new_tokens": int(row.max_new_tokens),
                                "do_sample": row.do_sample}) + "\n")
    outputs = {}
    for mode in ("local", "ray"):
        out = tmp_path / f"{mode}.jsonl"
        extra = ["--ray", "--concurrency", "2"] if mode == "ray" else []
        p = subprocess.run([sys.executable, "-m", "fastdecode", "batch", "-m", model_dir, "--input", str(src),
                            "--output", str(out), "--seed", "9", *extra], capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        lines = out.read_text().split("\n")[:-1]
        outputs[mode] = {r["id"]: r for r in map(json.loads, lines)}
        assert len(lines) == 24
    assert outputs["ray"] == outputs["local"]


def test_dask_equals_serial(model_dir, serial):
    dd = pytest.importorskip("dask.dataframe", reason="Dask is an optional extra (fastdecode[dask])")
    db = pytest.importorskip("dask.bag", reason="Dask is an optional extra (fastdecode[dask])")
    distributed = pytest.importorskip("distributed", reason="Dask's LocalCluster is in fastdecode[dask]")
    import fastdecode.dask

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        frame = prompts_frame()
        out = fastdecode.dask.generate(dd.from_pandas(frame, npartitions=6), model=model_dir, id_column="id",
                                       seed=9).compute()
        assert len(out) == 64 and by_id(out) == serial
        rows = fastdecode.dask.generate(db.from_sequence(frame.to_dict("records"), npartitions=5), model=model_dir,
                                        id_column="id", seed=9).compute()
        assert {r["id"]: (r["generated_text"], r["token_ids"], r["finish_reason"]) for r in rows} == serial
