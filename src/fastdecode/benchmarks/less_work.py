"""Less work per answer: session cache reuse, prefix reuse, prompt-lookup decoding.

On the bench checkpoints (``decode.checkpoint``: Llama-125M, GPT-2 124M,
random weights), one backend and thread count, every comparison timed in
the same process, same inputs, contenders alternating in rotated order,
medians and per-round paired ratios:

- session: time to first token (a ``stream()`` call until its first token,
  everything included) of a session's second turn (history ``HISTORY``
  tokens, 32 new ones) against a cold run on the whole transcript;
- document: a question against a ``DOCUMENT``-token document, asked again
  with another question (the model's prefix cache), first against second;
- prompt lookup: tokens/s of ``prompt_lookup_num_tokens=K`` against plain
  greedy on 400 new tokens, output compared token for token. Random weights
  do not copy, so the "model made to copy" is the checkpoint plus a logits
  processor that adds 100 to the logit of the next token of a target text
  (a stand-in for a trained model's induction heads; both contenders run it,
  the forward passes are the full model's). Copying: the target is the
  prompt (400 tokens of English, the embedded tokenizer's ids) with one
  token in 40 edited. Free text: the target is another 400 tokens of English
  that the prompt does not contain (drafts are proposed on common n-grams
  and mostly fail).

    python bench/less_work.py [--models llama-125m,gpt2-124m] [--rounds 5] [--threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import numpy as np

from . import harness
from .decode import checkpoint

HISTORY, NEW, DOCUMENT, QUESTION, COPY_TOKENS, K = 1000, 32, 1500, 24, 400, 7  # K + 1 = the C linear's 8 rows
EDIT_EVERY = 40
PROSE_MODULES = ("argparse", "json", "logging", "collections", "textwrap", "tarfile", "inspect", "functools",
                 "subprocess", "pathlib")
TARGETS = {"session": 0.10, "document": 0.15, "copying": 2.0, "free text": 0.95}


def _ttft(stream) -> float:
    t0 = time.perf_counter()
    next(stream)
    dt = time.perf_counter() - t0
    stream.close()  # a session or the prefix cache gets its cache back now
    return dt


@functools.cache
def _prose() -> tuple:
    """English prose (stdlib module docstrings) as the embedded tokenizer's ids (all < 4096)."""
    import importlib
    import inspect

    import fastdecode

    text = "\n\n".join(inspect.getdoc(importlib.import_module(m)) or "" for m in PROSE_MODULES)
    return tuple(fastdecode.load("default", prefix_cache_mb=0).tokenizer.encode(text, add_special_tokens=False))


def english(n: int, skip: int = 0) -> list:
    """n token ids of English prose, from token `skip` on."""
    ids = _prose()
    if len(ids) < skip + n:
        raise RuntimeError(f"only {len(ids)} tokens of prose")
    return list(ids[skip:skip + n])


def forced(target: list, prompt_len: int):
    """A logits processor that makes the model write `target` after the prompt."""
    target = np.asarray(target, np.int64)

    def proc(history, logits):  # history: [B, n] (-1 = padding), logits: [B, V]
        made = (history >= 0).sum(axis=1) - prompt_len
        logits = logits.copy()
        for b, i in enumerate(made):
            if 0 <= i < len(target):
                logits[b, target[i]] += 100.0
        return logits
    return proc


def rotated(contenders: dict, rounds: int) -> dict:
    """{name: [per-round results]}: every contender once per round, the order rotating."""
    names, out = list(contenders), {k: [] for k in contenders}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            out[k].append(contenders[k]())
    return out


def session_case(warm, cold, rng, rounds, length):
    history = [int(i) for i in rng.integers(1, 4000, length)]
    new = [int(i) for i in rng.integers(1, 4000, NEW)]

    def second_turn():
        s = warm.session()
        s.generate(history, max_new_tokens=1)  # turn 1: its answer joins the history
        return _ttft(s.stream(new, max_new_tokens=8, ignore_eos=True))

    full = history + [0] + new  # the same transcript (turn 1's answer token stands in as 0)
    return rotated({"session turn 2": second_turn,
                    "cold, full transcript": lambda: _ttft(cold.stream(full, max_new_tokens=8, ignore_eos=True))},
                   rounds)


def document_case(warm, rng, rounds, length):
    doc = [int(i) for i in rng.integers(1, 4000, length)]
    questions = [[int(i) for i in rng.integers(1, 4000, QUESTION)] for _ in range(2)]
    first, second = [], []
    for _ in range(rounds):
        warm.prefix_cache.clear()
        first.append(_ttft(warm.stream(doc + questions[0], max_new_tokens=8, ignore_eos=True)))
        second.append(_ttft(warm.stream(doc + questions[1], max_new_tokens=8, ignore_eos=True)))
    return {"second question": second, "first question": first}


def lookup_case(model, rounds, copying: bool):
    prompt = english(COPY_TOKENS)
    if copying:
        target = list(prompt)
        for i in range(EDIT_EVERY // 2, len(target), EDIT_EVERY):
            target[i] = (target[i] * 7 + 13) % 4000 + 1  # a small edit
    else:
        target = english(COPY_TOKENS, skip=COPY_TOKENS + 50)
    proc = forced(target, len(prompt))
    outputs = {}

    def run(k):
        def go():
            out = model.generate(prompt, max_new_tokens=COPY_TOKENS, ignore_eos=True, logits_processors=[proc],
                                 prompt_lookup_num_tokens=k)
            outputs.setdefault(k, out.token_ids)
            if out.token_ids != outputs[k]:
                raise AssertionError("a run's output changed between rounds")
            return out.timing
        return go

    times = rotated({f"lookup k={K}": run(K), "plain greedy": run(None)}, rounds)
    if outputs[K] != outputs[None]:
        raise AssertionError("prompt lookup changed the greedy output")
    assert outputs[None] == target, "the forced model did not write its target"
    acc = times[f"lookup k={K}"][-1]
    return {k: [t.generated_tokens_per_s for t in v] for k, v in times.items()}, \
        f"{acc.accepted_draft_tokens}/{acc.draft_tokens} drafts accepted"


def summary(name, results: dict, ratio_of: tuple, target, higher_better=False) -> dict:
    a, b = ratio_of
    ratios = np.array(results[a]) / np.array(results[b])
    med = float(np.median(ratios))
    met = med >= target if higher_better else med <= target
    return dict(case=name, **{k: float(np.median(v)) for k, v in results.items()}, ratio=med,
                ratio_range=[float(ratios.min()), float(ratios.max())], target=target, met=bool(met),
                ratio_of=f"{a} / {b}")


def run(models, rounds: int, threads: int, backend: str = "c", progress=print) -> list:
    import fastdecode

    rows = []
    with harness.threads(threads), fastdecode.use_backend(backend):
        for name in models:
            directory = checkpoint(name)
            warm, cold = fastdecode.load(directory, prefix_cache_mb=1024), fastdecode.load(directory, prefix_cache_mb=0)
            rng = np.random.default_rng(0)
            history = min(HISTORY, warm.config.max_positions - NEW - 16)  # GPT-2: 1024 positions in all
            for label, make in [
                ("session", lambda: (session_case(warm, cold, rng, rounds, history),
                                     ("session turn 2", "cold, full transcript"), TARGETS["session"], False,
                                     f"{history}-token history")),
                ("document", lambda: (document_case(warm, rng, rounds, min(DOCUMENT, warm.config.max_positions - 64)),
                                      ("second question", "first question"), TARGETS["document"], False,
                                      f"{min(DOCUMENT, warm.config.max_positions - 64)}-token document")),
                ("copying", lambda: (*lookup_case(cold, rounds, True)[:1], (f"lookup k={K}", "plain greedy"),
                                     TARGETS["copying"], True, "")),
                ("free text", lambda: (*lookup_case(cold, rounds, False)[:1], (f"lookup k={K}", "plain greedy"),
                                       TARGETS["free text"], True, "")),
            ]:
                results, ratio_of, target, higher, note = make()
                row = dict(model=name, threads=threads, backend=backend, note=note,
                           **summary(label, results, ratio_of, target, higher))
                rows.append(row)
                progress(json.dumps(row))
    return rows


def table(rows) -> str:
    lines = ["| model | case | contenders (medians) | paired ratio, median [min, max] | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a, b = r["ratio_of"].split(" / ")
        unit = " tok/s" if r["case"] in ("copying", "free text") else " s"
        fmt = (lambda v: f"{v:.1f}{unit}") if unit == " tok/s" else (lambda v: f"{v * 1e3:.0f} ms")
        lines.append(f"| {r['model']} | {r['case']}{' (' + r['note'] + ')' if r['note'] else ''} | {a}: {fmt(r[a])}, "
                     f"{b}: {fmt(r[b])} | {r['ratio']:.3f} [{r['ratio_range'][0]:.3f}, {r['ratio_range'][1]:.3f}] | "
                     f"{'≥' if unit == ' tok/s' else '≤'} {r['target']} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="llama-125m,gpt2-124m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="c", choices=["c", "numpy"])
    parser.add_argument("--json", default=None, help="write the rows and the machine here")
    args = parser.parse_args(argv)
    rows = run(args.models.split(","), args.rounds, args.threads, args.backend,
               progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine(), "rows": rows}, f, indent=1)
    return 0
