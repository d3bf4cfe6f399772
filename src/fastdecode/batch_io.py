"""The batch job: JSON lines in, JSON lines out, restartable, nothing lost.

Input, one JSON object per line::

    {"id": "doc-1", "prompt": "Translate: ...", "max_new_tokens": 128, "temperature": 0.7, "seed": 3}

    {"id": "chat-1", "messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 64}

``prompt`` is text or a list of token ids; ``messages`` (in its place) a
conversation in the OpenAI / Hugging Face chat form, rendered with the
checkpoint's chat template and stopped at its end-of-turn token, so the
row's text equals ``model.chat(messages, rng=seed, ...)``'s (a model
without a template: the line is reported as bad). ``id`` (any JSON value;
default: the line number, from 1) names the row in the output; ``seed``
and any :class:`~fastdecode.generation.GenerationConfig` field (except
logits_processors) set that row. Output, one line per finished row, in
completion order::

    {"id": "doc-1", "text": "...", "token_ids": [...], "prompt_tokens": 12, "generated_tokens": 40,
     "finish_reason": "eos"}

Nothing is lost or written twice: each line is appended and flushed whole
as its row finishes; a rerun with the same output file first drops a
partial last line (a kill in mid-write) and skips every id already there.
A row without its own seed draws from ``row_seed(seed, id)``, so a rerun,
or a run split over machines, gives every row the same tokens. A bad line
(not JSON, unknown keys, a duplicate id, a prompt too long) is reported
with its line number; ``on_error="stop"`` ends the run after the rows in
flight, ``"skip"`` goes on; either way it is counted in the summary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Iterable, Iterator

from . import batch
from .generation import GenerationConfig

__all__ = ["parse_record", "result_record", "completed_ids", "read_records", "generate_records", "run_job",
           "Predictor", "forget_models"]

SETTINGS = frozenset(f.name for f in dataclasses.fields(GenerationConfig)) - {"logits_processors"}
KEYS = SETTINGS | {"id", "prompt", "messages", "seed"}


def id_key(value) -> str:
    """A record id as a set key: its canonical JSON (so 1 and "1" differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_record(record, default_id):
    """(id, item for :func:`fastdecode.batch.prepare`) from one input record.
    Raises ValueError naming the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"a line must hold a JSON object; got {type(record).__name__}")
    unknown = set(record) - KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
    if ("prompt" in record) == ("messages" in record):
        raise ValueError("a line needs 'prompt' or 'messages'" + (", not both" if "prompt" in record else ""))
    rid = record.get("id", default_id)
    if isinstance(rid, (dict, list)) or rid is None:
        raise ValueError(f"'id' must be a string or a number; got {json.dumps(rid)}")
    return rid, {k: v for k, v in record.items() if k != "id"}


def json_line(record) -> str:
    """One line of JSON, UTF-8 as is, except the characters Python's
    str.splitlines (and JavaScript) also take for line ends."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_ENDS) + "\n"


_LINE_ENDS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def result_record(rid, result) -> dict:
    return {"id": rid, "text": result.text, "token_ids": [int(t) for t in result.token_ids],
            "prompt_tokens": len(result.prompt_ids), "generated_tokens": len(result.token_ids),
            "finish_reason": result.finish_reason}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def completed_ids(path: str, log=sys.stderr) -> set:
    """Ids already in the output file (as :func:`id_key`). A last line with
    no newline is the remains of an interrupted write: it is cut off the
    file. Raises ValueError for a damaged complete line."""
    done = set()
    if not os.path.exists(path):
        return done
    with open(path, "rb+") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                f.truncate(offset)
                print(f"fastdecode batch: {path}:{lineno}: dropped a partial last line ({len(line)} bytes) "
                      "left by an interrupted run", file=log)
                break
            offset += len(line)
            try:
                done.add(id_key(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a result line of fastdecode batch ({exc}); "
                                 "is this the right output file?") from None
    return done


def read_records(path: str, skip=frozenset()) -> Iterator[tuple]:
    """(line number, id, item, None) per input line whose id is not in
    `skip`, or (line number, id or None, None, error message) for a bad one.
    Blank lines are ignored."""
    seen = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rid = None
            try:
                rid, item = parse_record(json.loads(line), lineno)
                key = id_key(rid)
                if key in seen:
                    raise ValueError(f"id {key} appears again (ids must be unique to resume a run)")
                seen.add(key)
            except ValueError as exc:  # json.JSONDecodeError is one
                yield lineno, rid, None, str(exc)
                continue
            if key not in skip:
                yield lineno, rid, item, None


# ---------------------------------------------------------------------------
# Generation over records
# ---------------------------------------------------------------------------

def generate_records(model, records: Iterable[tuple], config: GenerationConfig, *, max_batch=8, prefill_chunk=128,
                     seed=None, stop_on_error=False, step=None) -> Iterator[tuple]:
    """Decode (tag, id, item) triples with continuous batching. Yields (tag,
    id, result, None) as rows finish and (tag, id, None, error message) for
    a bad item (after which nothing more is read when `stop_on_error`).
    Each row's seed: the item's, else ``row_seed(seed, id)``."""
    tags, errors = {}, []

    def requests():
        for index, (tag, rid, item) in enumerate(records):
            try:
                request = batch.prepare(model, item, index, config, seed, key=rid)
            except (TypeError, ValueError) as exc:
                errors.append((tag, rid, None, str(exc)))
                if stop_on_error:
                    return
                continue
            tags[index] = (tag, rid)
            yield request

    for index, result in batch.run(model, requests(), max_batch, prefill_chunk, step or batch.default_step(model)):
        yield from _drain(errors)
        yield (*tags.pop(index), result, None)
    yield from _drain(errors)


def _drain(items: list):
    while items:
        yield items.pop(0)


def run_job(model, input_path: str, output_path: str, config: GenerationConfig, *, max_batch=8, prefill_chunk=128,
            seed=None, on_error="stop", progress=None, log=sys.stderr, engine=None) -> dict:
    """The ``fastdecode batch`` job: decode every line of `input_path` whose
    id is not yet in `output_path`, appending one result line per row.
    ``engine(records) -> iterator`` replaces in-process decoding (the Ray
    runner). Returns counts: done_before, written, bad, generated_tokens."""
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip'; got {on_error!r}")
    done = completed_ids(output_path, log)
    total = sum(1 for line in open(input_path, encoding="utf-8") if line.strip())
    stats = {"done_before": len(done), "written": 0, "bad": 0, "generated_tokens": 0}

    def good_records():
        for lineno, rid, item, error in read_records(input_path, done):
            if error is None:
                yield lineno, rid, item
                continue
            report(lineno, rid, error)
            if on_error == "stop":
                return

    def report(lineno, rid, error):
        stats["bad"] += 1
        where = f"{input_path}:{lineno}" + ("" if rid is None else f" (id {id_key(rid)})")
        action = "stopping after the rows in flight" if on_error == "stop" else "skipped"
        print(f"fastdecode batch: {where}: {error}; {action}", file=log)

    if engine is None:
        engine = lambda recs: generate_records(model, recs, config, max_batch=max_batch,  # noqa: E731
                                               prefill_chunk=prefill_chunk, seed=seed,
                                               stop_on_error=on_error == "stop")
    bar = _progress(total, len(done), progress)
    t0 = time.perf_counter()
    with open(output_path, "a", encoding="utf-8") as out:
        for lineno, rid, result, error in engine(good_records()):
            if error is not None:
                report(lineno, rid, error)
                continue
            record = result if isinstance(result, dict) else result_record(rid, result)
            out.write(json_line(record))
            out.flush()
            stats["written"] += 1
            stats["generated_tokens"] += record["generated_tokens"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{stats['generated_tokens'] / (time.perf_counter() - t0):.1f} tokens/s")
        os.fsync(out.fileno())
    if bar is not None:
        bar.close()
    stats["seconds"] = time.perf_counter() - t0
    return stats


def _progress(total, initial, enabled):
    """A tqdm bar on stderr (rows done of all; tokens/s); None when disabled
    (``enabled=None``: only on a terminal)."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="row", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------
# The scale-out callable (Ray Data map_batches, Dask map_partitions)
# ---------------------------------------------------------------------------

_OUTPUTS = ("generated_text", "token_ids", "prompt_tokens", "generated_tokens", "finish_reason", "error")
_MODELS: dict = {}  # (path, weight format) -> Model, one per process (a Ray actor, a Dask worker)


def forget_models() -> None:
    """Drop this process's loaded models (the next batch loads afresh), e.g.
    ``client.run(forget_models)`` on every Dask worker."""
    _MODELS.clear()


class Predictor:
    """Generation over table batches, for ``ray.data.Dataset.map_batches``
    (a callable class: one instance per actor) and Dask's
    ``map_partitions``. The model is loaded once per process, on the first
    batch, and only its path travels with the callable.

    A batch is a dict of column -> array (Ray's "numpy" format) or a
    pandas DataFrame. Each row's prompt is in ``column`` (text or token
    ids); columns named like a GenerationConfig field or ``seed`` set that
    row (null/NaN: not set); a cell holding a list of ``{"role", "content"}``
    dicts is a conversation, rendered with the chat template as
    :meth:`fastdecode.Model.chat` does; with ``jsonl=True`` the column holds whole
    input lines of the batch job instead. Rows without a seed draw from
    ``row_seed(seed, key)``, key being the ``id_column`` value, else the
    prompt itself, so a row's tokens never depend on how rows were split.
    Adds columns ``generated_text``, ``token_ids``, ``prompt_tokens``,
    ``generated_tokens``, ``finish_reason`` and ``error`` (None, or why the
    row could not be decoded) and returns the batch in its own format.

    ``num_threads``: fastdecode's threads; default the CPUs Ray assigned
    to this actor, else Dask's threads per worker, else unchanged.
    """

    def __init__(self, model: str, column: str = "prompt", *, id_column=None, jsonl=False, max_batch=16,
                 prefill_chunk=128, seed=None, num_threads=None, backend=None, weights=None, max_new_tokens=64,
                 **settings):
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("model must be a checkpoint path (it is loaded once in each worker process)")
        self.model_path, self.column, self.id_column, self.jsonl = os.fspath(model), column, id_column, jsonl
        self.max_batch, self.prefill_chunk, self.seed = max_batch, prefill_chunk, seed
        self.num_threads, self.backend, self.weights = num_threads, backend, weights
        from .model import Model

        self.config = Model._settings(None, max_new_tokens, settings)
        batch.row_seed(seed, 0)

    def _model(self):
        import fastdecode

        if self.backend is not None:
            fastdecode.set_backend(self.backend)
        threads = self.num_threads or _worker_cpus()
        if threads:
            fastdecode.set_num_threads(int(threads))
        key = (self.model_path, self.weights)
        if key not in _MODELS:
            _MODELS[key] = fastdecode.load(self.model_path, weights=self.weights)
        return _MODELS[key]

    def __call__(self, table):
        """table: dict of column -> array, a pandas DataFrame, or a list of dicts (rows)."""
        model = self._model()
        if isinstance(table, (list, tuple)):  # a dask Bag partition: rows as dicts
            names = list(dict.fromkeys(k for row in table for k in row))
            columns = {name: [row.get(name) for row in table] for name in names}
            out = self(columns)
            return [{**row, **{k: _plain(out[k][i]) for k in _OUTPUTS}} for i, row in enumerate(table)]
        is_frame = not isinstance(table, dict)
        columns = {name: list(table[name]) for name in table} if not is_frame else \
            {name: table[name].tolist() for name in table.columns}
        if self.column not in columns:
            raise ValueError(f"no column {self.column!r} (the prompts); columns: {', '.join(map(str, columns))}")
        n = len(columns[self.column])
        records = [(i, *self._row(columns, i)) for i in range(n)]
        out = {name: [None] * n for name in _OUTPUTS}
        bad = [(i, rid, item) for i, rid, item in records if isinstance(item, str)]
        for i, _, message in bad:
            out["error"][i] = message
        good = [r for r in records if not isinstance(r[2], str)]
        for i, rid, result, error in generate_records(model, good, self.config, max_batch=self.max_batch,
                                                       prefill_chunk=self.prefill_chunk, seed=self.seed):
            if error is not None:
                out["error"][i] = error
                continue
            record = result_record(rid, result)
            out["generated_text"][i] = record["text"]
            for name in ("token_ids", "prompt_tokens", "generated_tokens", "finish_reason"):
                out[name][i] = record[name]
        if is_frame:
            frame = table.copy()
            for name, values in out.items():
                frame[name] = values
            return frame
        import numpy as np

        result = dict(table)
        for name, values in out.items():
            # objects: np.array would make equal-length token lists one 2-D array, and cut trailing NULs off text
            column = np.empty(n, object)
            column[:] = values
            result[name] = column if None in values or name not in ("prompt_tokens", "generated_tokens") \
                else np.array(values, np.int64)
        return result

    def _row(self, columns, i):
        """(key, item) of row i; item is an error message (str) for a bad row."""
        value = _plain(columns[self.column][i])
        try:
            if self.jsonl:
                rid, item = parse_record(json.loads(value), value)  # no id: the line itself keys the row
                return rid, item
            is_chat = isinstance(value, list) and value and isinstance(value[0], dict)
            item = {"messages" if is_chat else "prompt": value}
            for name in columns:
                if name in SETTINGS or name == "seed":
                    v = _plain(columns[name][i])
                    if v is not None:
                        item[name] = v
        except ValueError as exc:
            return None, str(exc)
        key = _plain(columns[self.id_column][i]) if self.id_column else value
        return (key if not isinstance(key, list) else json.dumps(key)), item


def _plain(value):
    """A table cell as a plain Python value: arrays become lists, NaN None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _worker_cpus():
    """CPUs Ray assigned to this actor, or this Dask worker's threads; None elsewhere."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return get_worker().nthreads
        except (ValueError, AttributeError):
            pass
    return None
