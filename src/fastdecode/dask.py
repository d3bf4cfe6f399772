"""Dask: generation over a dask DataFrame or Bag, one model per worker process.

    import dask.dataframe as dd, fastdecode.dask
    from distributed import Client, LocalCluster
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    df = dd.read_json("prompts.jsonl", lines=True, blocksize=None)   # a "prompt" column
    out = fastdecode.dask.generate(df, model="path/to/checkpoint", max_new_tokens=64, seed=0).compute()

The callable is the one Ray uses (:class:`~fastdecode.batch_io.Predictor`):
only the checkpoint's path and the settings travel with each task; the
model is loaded once per worker process and fastdecode's threads are set
to the worker's threads. Rows' seeds depend on the row alone, so the
result equals a serial run's for any partitioning. Run one thread per
worker process (``threads_per_worker=1``) and give the cores to
fastdecode's own threads (``num_threads``) rather than to Dask's.

Prompts given as token-id lists: Dask turns object columns into strings
by default, so make the frame under
``dask.config.set({"dataframe.convert-string": False})`` (text prompts
need nothing).

Needs ``pip install fastdecode[dask]``.
"""
from __future__ import annotations

from .batch_io import Predictor

__all__ = ["Predictor", "generate", "OUTPUT_COLUMNS"]

OUTPUT_COLUMNS = {"generated_text": object, "token_ids": object, "prompt_tokens": "int64",
                  "generated_tokens": "int64", "finish_reason": object, "error": object}


def generate(collection, *, model: str, column: str = "prompt", **options):
    """``collection.map_partitions(Predictor(model, column, **options))``
    with the output's metadata: a dask DataFrame gains the columns of
    :data:`OUTPUT_COLUMNS`; a dask Bag of dicts (``column`` holding the
    prompt, other keys settings) becomes a Bag of dicts with those keys
    added. ``options``: :class:`Predictor`'s (max_batch, id_column, seed,
    num_threads, settings)."""
    predictor = Predictor(model, column, **options)
    if hasattr(collection, "_meta"):  # a dask DataFrame
        import pandas as pd

        meta = collection._meta.assign(**{name: pd.Series([], dtype=dtype, index=collection._meta.index)
                                          for name, dtype in OUTPUT_COLUMNS.items()})
        return collection.map_partitions(predictor, meta=meta)
    return collection.map_partitions(predictor)
