"""Ray Data: generation over a Dataset by a pool of actors, one model each.

    import ray, fastdecode.ray
    ds = ray.data.read_json("prompts.jsonl")                     # a "prompt" column
    out = fastdecode.ray.generate(ds, model="path/to/checkpoint", concurrency=4, num_cpus=2,
                                  max_new_tokens=64, seed=0)
    out.write_json("results")

Each actor (``concurrency`` of them, ``num_cpus`` CPUs each, fastdecode's
threads set to match) builds one :class:`~fastdecode.batch_io.Predictor`,
loads the model once, and decodes the batches it is handed with
continuous batching. Only the checkpoint's *path* and the settings are
sent to an actor (each node reads the weights from its own disk or a
shared file system); weights, KV caches and the tokenizer are never
shipped. A row's seed depends on the row alone (its ``seed`` column, else
``row_seed(seed, id or prompt)``), so any split of the data over any
number of actors gives the tokens of a serial run. An actor that dies is
restarted and its unfinished batch is run again (``max_restarts`` and
``max_task_retries``): the rows of a lost node are redone, never dropped,
and since they are regenerated from the same seeds they come out the same.

Needs ``pip install fastdecode[ray]``.
"""
from __future__ import annotations

import json

from .batch_io import Predictor

__all__ = ["Predictor", "generate", "job_engine"]


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("fastdecode.ray needs Ray Data: pip install 'fastdecode[ray]'") from exc
    return ray


def generate(dataset, *, model: str, column: str = "prompt", concurrency: int | None = None, num_cpus: int = 1,
             batch_size: int | None = None, max_batch: int = 16, id_column: str | None = None, seed=None,
             max_restarts: int = -1, **settings):
    """``dataset.map_batches`` with a :class:`Predictor` per actor: the
    dataset with columns ``generated_text``, ``token_ids``,
    ``prompt_tokens``, ``generated_tokens``, ``finish_reason`` and
    ``error`` added (lazy, as Ray Data is). ``concurrency``: actors
    (default: the cluster's CPUs / num_cpus). ``batch_size``: rows per
    call (default 4 x max_batch; a lost actor's batch is redone whole;
    below max_batch, an actor's batch never fills). An actor is handed a
    batch only when idle (``max_tasks_in_flight_per_actor=1``): a call
    takes seconds to minutes, and a batch queued behind a busy actor would
    leave another idle (the first actor up could otherwise take two).
    ``settings``: generation settings for every row (a column of the same
    name overrides them per row), ``max_new_tokens`` included."""
    ray = _ray()
    from ray.data import ActorPoolStrategy

    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
    return dataset.map_batches(
        Predictor, fn_constructor_kwargs=dict(model=model, column=column, id_column=id_column, max_batch=max_batch,
                                              seed=seed, num_threads=num_cpus, **settings),
        batch_size=batch_size or 4 * max_batch, batch_format="numpy", num_cpus=num_cpus,
        compute=ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1),
        max_restarts=max_restarts, max_task_retries=-1)


def _batch_size(rows: int, actors: int, max_batch: int) -> int:
    """Rows per call: 4 x max_batch (a call's tail, its last rows finishing
    with slots empty, is then a small part of it; a lost actor redoes one
    call), but no more than an even share per actor, so that every actor
    gets work."""
    return max(1, min(4 * max_batch, -(-rows // actors)))


def job_engine(model: str, config, *, address=None, concurrency=None, num_cpus=1, backend=None, weights=None,
               max_batch=16, prefill_chunk=128, seed=None):
    """The ``fastdecode batch --ray`` engine for :func:`fastdecode.batch_io.run_job`:
    (line, id, item) records in, (line, id, result record, error) out as the cluster finishes them."""
    ray = _ray()

    def engine(records):
        rows = [{"line": line, "record": json.dumps({"id": rid, **item})} for line, rid, item in records]
        if not rows:
            return
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        settings = {f: getattr(config, f) for f in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                                                    "min_p", "repetition_penalty", "stop", "ignore_eos")}
        actors = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
        size = _batch_size(len(rows), actors, max_batch)
        out = generate(ray.data.from_items(rows, override_num_blocks=-(-len(rows) // size)), model=model,
                       column="record", jsonl=True, concurrency=actors, num_cpus=num_cpus, batch_size=size,
                       max_batch=max_batch, prefill_chunk=prefill_chunk, seed=seed, backend=backend, weights=weights,
                       **settings)
        for row in out.iter_rows():
            rid = json.loads(row["record"])["id"]
            if row["error"] is not None:
                yield int(row["line"]), rid, None, row["error"]
                continue
            yield int(row["line"]), rid, {
                "id": rid, "text": row["generated_text"], "token_ids": [int(t) for t in row["token_ids"]],
                "prompt_tokens": int(row["prompt_tokens"]), "generated_tokens": int(row["generated_tokens"]),
                "finish_reason": row["finish_reason"]}, None

    return engine
