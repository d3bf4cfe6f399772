#!/usr/bin/env python3
"""Train the small default model that ships inside the fastdecode wheel.

The model is a tiny Llama (RoPE, grouped-query attention, SwiGLU, tied
embeddings) trained on English prose taken from the CPython standard library
itself: the reference-manual topics in ``pydoc_data/topics.py`` plus the
docstrings of the pure-Python stdlib modules and of the built-in C modules.
All of it is PSF-licensed, needs no download, and is the same on every
machine running the same Python version, so the model can be rebuilt anywhere.

Outputs (default ``src/fastdecode/models/default/``):
    model.safetensors, config.json, generation_config.json  (float16)
    tokenizer.json, tokenizer_config.json                   (byte-level BPE)
    MODEL_CARD.md                                           (numbers + samples)

Example:
    python tools/train_default_model.py --minutes 20
    python tools/train_default_model.py --steps 1500   # exact, reproducible

Training uses a single torch thread on purpose: the result must not depend on
the core count, and the machines it is built on are shared.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import math
import platform
import random
import re
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

EOT = "<|endoftext|>"  # BOS, EOS and PAD all at once, id 0 (GPT-2 style)
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------

# reST heading underlines ("*****", "=====") carry no prose.
_RULE = re.compile(r"^\s*([*=\-~^\"'#+.])\1{2,}\s*$")

# stdlib trees that are tests, vendored third-party code, or the topics file
# (read separately), none of which is the prose we want.
_SKIP_PREFIXES = ("test/", "site-packages/", "dist-packages/", "pydoc_data/",
                  "idlelib/idle_test/", "lib2to3/tests/", "tkinter/test/",
                  "ensurepip/_bundled/")


def paragraphs(text: str):
    """Split reST-ish text into paragraphs, each re-flowed onto one line."""
    text = textwrap.dedent(text.expandtabs(4))
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.split("\n")
                 if ln.strip() and not _RULE.match(ln)]
        if lines:
            p = re.sub(r"\s+", " ", " ".join(lines)).strip()
            # Sphinx roles (:attr:`x`) and ``literals`` -> "x", as the topics text writes code.
            p = re.sub(r":[a-z]+(?::[a-z]+)*:`~?([^`]+)`", r'"\1"', p)
            yield re.sub(r"``([^`]+)``", r'"\1"', p)


# Code and grammar that survive the letter-ratio test below: BNF rules,
# definitions, assignments, doctest prompts.
_CODE = re.compile(r"::=|\bdef \w+\(|\bclass \w+[:(]|\w+ = \S|>>>|^\.\.\. |\w\(\)\.")


def is_prose(p: str) -> bool:
    """Keep paragraphs that read as sentences, not code or signatures.

    Indented blocks are tested like the rest: in docstrings they are often
    parameter descriptions (prose), in the reference they are mostly code.
    """
    if p.startswith((">>>", "...", "$", "%", "{", "[", "(")) or _CODE.search(p):
        return False
    if len(p.split()) < 5:
        return False
    plain = sum(ch.isalpha() or ch == " " for ch in p)
    return plain / len(p) >= 0.80


def topic_docs():
    """The language reference as shipped with pydoc (one doc per topic)."""
    import pydoc_data.topics as topics
    for key in sorted(topics.topics):
        yield f"topics:{key}", topics.topics[key]


def source_docs(stdlib: Path):
    """Docstrings of every pure-Python stdlib module, one doc per file.

    Read with ``ast`` rather than imported, so no module runs (no browser
    from ``antigravity``, no GUI from ``tkinter``).
    """
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if rel.startswith(_SKIP_PREFIXES) or "/tests/" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node, clean=True) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef,
                                     ast.FunctionDef, ast.AsyncFunctionDef))]
        yield f"lib:{rel}", "\n\n".join(d for d in docs if d)


def builtin_docs():
    """Docstrings of the C modules compiled into the interpreter."""
    for name in sorted(sys.builtin_module_names):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            docs.append(getattr(obj, "__doc__", None) if callable(obj) else None)
            if inspect.isclass(obj):
                docs += [getattr(m, "__doc__", None)
                         for _, m in sorted(vars(obj).items())]
        docs = [inspect.cleandoc(d) for d in docs if isinstance(d, str)]
        yield f"builtin:{name}", "\n\n".join(docs)


def build_corpus(val_fraction: float, seed: int):
    """Return (train_docs, val_docs), each a list of cleaned documents.

    Paragraphs are de-duplicated across the whole corpus (inherited
    boilerplate like "Return repr(self)." appears hundreds of times), and the
    split is by whole document so validation text is never seen in training.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen, docs = set(), []
    for source in (topic_docs(), source_docs(stdlib), builtin_docs()):
        for name, text in source:
            keep = []
            for p in paragraphs(text):
                if is_prose(p) and p not in seen:
                    seen.add(p)
                    keep.append(p)
            if keep:
                docs.append((name, "\n\n".join(keep)))
    rng = random.Random(seed)
    rng.shuffle(docs)
    total = sum(len(t) for _, t in docs)
    val, val_chars = [], 0
    while val_chars < val_fraction * total:
        name, text = docs.pop()
        val.append(text)
        val_chars += len(text)
    return [t for _, t in docs], val


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE: every UTF-8 string round-trips, no <unk> ever.

    The post-processor prepends <|endoftext|> as BOS, matching how documents
    start during training, so a plain ``encode(prompt)`` is ready to decode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, 0)])
    assert tok.token_to_id(EOT) == 0
    probe = "Tabs\tand ünïcödé “quotes” — 字 🙂\n  spaces "
    assert tok.decode(tok.encode(probe).ids, skip_special_tokens=True) == probe
    return tok


def encode_docs(tok, docs) -> np.ndarray:
    """One token stream: <eot> doc <eot> doc ... (each doc gets BOS)."""
    ids = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)  # enc already starts with <eot> from the template
    ids.append(0)
    return np.asarray(ids, dtype=np.int64)


def save_tokenizer(tok, out: Path, max_len: int):
    tok.save(str(out / "tokenizer.json"))
    # Enough for transformers.AutoTokenizer / PreTrainedTokenizerFast.
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT,
           "eos_token": EOT, "pad_token": EOT, "unk_token": None,
           "add_bos_token": True, "model_max_length": max_len,
           "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


# --------------------------------------------------------------------------
# Model + training
# --------------------------------------------------------------------------

def make_model(args, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden,
        intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def lr_at(step: int, total: int, args, time_frac: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak.

    time_frac (elapsed / budget) lets a wall-clock run still anneal fully when
    the shared machine gets slower than the calibration said.
    """
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, max(time_frac, (step - args.warmup) / max(1, total - args.warmup)))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def random_batch(stream: np.ndarray, batch: int, seq: int, rng: np.random.Generator):
    starts = rng.integers(0, len(stream) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([stream[s:s + seq + 1] for s in starts]))


def lm_loss(model, x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of windows x (B, T+1): predict x[:, 1:] from x[:, :-1]."""
    logits = model(input_ids=x[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction=reduction)


@torch.no_grad()
def evaluate(model, stream: np.ndarray, seq: int, batch: int = 16) -> float:
    """Mean next-token loss over the whole validation stream (fixed windows)."""
    model.eval()
    n = (len(stream) - 1) // seq
    windows = np.stack([stream[i * seq:i * seq + seq + 1] for i in range(n)])
    total, count = 0.0, 0
    for i in range(0, n, batch):
        x = torch.from_numpy(windows[i:i + batch])
        total += lm_loss(model, x, reduction="sum").item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def calibrate_steps(model, opt, stream, args, rng) -> int:
    """Time a few forward+backward passes (no update) to fit --minutes."""
    t0 = None
    for i in range(8):
        if i == 3:
            t0 = time.perf_counter()
        x = random_batch(stream, args.batch, args.seq_len, rng)
        lm_loss(model, x).backward()
        opt.zero_grad(set_to_none=True)  # no opt.step: weights stay untouched
    per_step = (time.perf_counter() - t0) / 5
    # Leave ~8% for the periodic evaluations and the final save/samples.
    return max(50, int(args.minutes * 60 * 0.92 / per_step))


def train(model, train_ids, val_ids, args):
    rng = np.random.default_rng(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    total = args.steps or calibrate_steps(model, opt, train_ids, args,
                                          np.random.default_rng(args.seed + 1))
    print(f"training for {total} steps of {args.batch}x{args.seq_len} tokens", flush=True)
    budget = args.minutes * 60
    start, history, step = time.perf_counter(), [], 0
    model.train()
    for step in range(total):
        # With --steps the schedule is step-exact (reproducible); without, it
        # also follows the clock, keeping 8% of the budget for evals and saving.
        time_frac = 0.0 if args.steps else (time.perf_counter() - start) / (0.92 * budget)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args, time_frac)
        x = random_batch(train_ids, args.batch, args.seq_len, rng)
        loss = lm_loss(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == total - 1:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}/{total}  loss {loss.item():.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {elapsed / 60:5.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0:
            vl = evaluate(model, val_ids, args.seq_len)
            history.append((step + 1, vl))
            print(f"  val loss {vl:.3f} (ppl {math.exp(vl):.1f})", flush=True)
        if time_frac >= 1.0 or time.perf_counter() - start > budget:
            print(f"time budget reached, stopping at step {step + 1}", flush=True)
            break
    return step + 1, time.perf_counter() - start, history


# --------------------------------------------------------------------------
# Save, reload, sample, card
# --------------------------------------------------------------------------

def save_model(model, out: Path):
    from transformers import GenerationConfig
    model.config.use_cache = True
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     max_new_tokens=64).save_pretrained(out)
    # transformers 5 nests RoPE settings under "rope_parameters"; also write the
    # flat pre-5 key so older transformers and hand-written loaders find it.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_back(out: Path):
    """Reload exactly what ships (fp16 weights), upcast to fp32 for CPU math."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    return model, Tokenizer.from_file(str(out / "tokenizer.json"))


PROMPTS = ["Once upon a time", "The list", "A function", "The"]


def generate(model, tok, prompt: str, sample: bool, seed: int, n: int = 48) -> str:
    ids = torch.tensor([tok.encode(prompt).ids])
    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=0.8, top_k=40) if sample else dict(do_sample=False)
    with torch.no_grad():
        outp = model.generate(ids, max_new_tokens=n, eos_token_id=0, pad_token_id=0, **kw)
    return tok.decode(outp[0].tolist(), skip_special_tokens=True)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def write_card(out: Path, info: dict, samples: list):
    cfg = info["config"]
    lines = [
        "# fastdecode default model",
        "",
        "A tiny Llama-architecture causal language model trained from scratch for",
        "fastdecode's tests, examples and benchmarks. It writes recognisable English in",
        "the style of the Python documentation; it knows nothing else and is not",
        "useful as an assistant. It is here so that fastdecode works out of the box",
        "without downloading anything.",
        "",
        "## Architecture",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| architecture | `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, tied embeddings) |",
        f"| layers | {cfg['num_hidden_layers']} |",
        f"| hidden size | {cfg['hidden_size']} |",
        f"| intermediate (SwiGLU) size | {cfg['intermediate_size']} |",
        f"| attention heads / KV heads | {cfg['num_attention_heads']} / {cfg['num_key_value_heads']} (head dim {cfg['hidden_size'] // cfg['num_attention_heads']}) |",
        f"| vocabulary | {cfg['vocab_size']} (byte-level BPE) |",
        f"| max position embeddings | {cfg['max_position_embeddings']} (trained on {info['seq_len']}-token windows) |",
        f"| RoPE theta | {info['rope_theta']} |",
        f"| parameters | {info['params']:,} ({info['params'] / 1e6:.2f} M, tied embedding counted once) |",
        f"| weights dtype | float16 (`model.safetensors`, {info['weights_bytes'] / 1e6:.2f} MB) |",
        f"| directory size | {info['dir_bytes'] / 1e6:.2f} MB |",
        "",
        "## Tokenizer",
        "",
        f"`tokenizer.json` is a byte-level BPE (`tokenizers` library) with {cfg['vocab_size']} entries:",
        "256 byte symbols, merges learned on the training split, and one special token",
        "`<|endoftext|>` (id 0) used as BOS, EOS and padding. Any UTF-8 text round-trips.",
        "`Tokenizer.encode()` prepends `<|endoftext|>` (the post-processor does it), as",
        "every training document started with it; decode with `skip_special_tokens=True`.",
        "",
        "## Training data and licence",
        "",
        f"English prose from the CPython {info['python']} standard library, nothing downloaded:",
        "",
        "* `pydoc_data/topics.py`: the language-reference topics that `help()` shows;",
        "* docstrings of the pure-Python stdlib modules (read with `ast`, tests excluded);",
        "* docstrings of the interpreter's built-in C modules (`sys`, `builtins`, ...).",
        "",
        "Paragraphs were re-flowed to one line, Sphinx roles and ``literals`` turned into",
        "\"quoted\" names (the reference's own style), paragraphs that look like code,",
        "grammar rules or doctests dropped, and duplicates removed. All of this",
        "text is part of Python, under the Python Software Foundation License; the",
        "trained weights are shipped under the same terms as fastdecode.",
        "",
        f"* documents: {info['train_docs']} train / {info['val_docs']} validation (split by whole document)",
        f"* characters: {info['train_chars']:,} train / {info['val_chars']:,} validation",
        f"* tokens: {info['train_tokens']:,} train / {info['val_tokens']:,} validation",
        "",
        "## Training",
        "",
        f"* {info['steps']} steps of {info['batch']} x {info['seq_len']} tokens = "
        f"{info['tokens_seen']:,} tokens seen (~{info['tokens_seen'] / info['train_tokens']:.1f} epochs)",
        f"* AdamW (betas 0.9/0.95, weight decay {info['weight_decay']}), peak LR {info['lr']}, "
        f"{info['warmup']} warm-up steps, cosine decay to 10%, grad-norm clip 1.0",
        f"* {info['train_seconds'] / 60:.1f} minutes on one CPU thread (torch {info['torch']}, "
        f"transformers {info['transformers']}), seed {info['seed']}",
        f"* final validation loss (fp16 weights as shipped): **{info['val_loss']:.3f}** nats/token, "
        f"perplexity **{math.exp(info['val_loss']):.1f}**",
        "",
        "Reproduce (from the repository root, with the same Python/torch versions):",
        "",
        "```",
        info["command"],
        "```",
        "",
        "## Loading",
        "",
        "```python",
        "from pathlib import Path",
        "import fastdecode, torch",
        "from tokenizers import Tokenizer",
        "from transformers import AutoModelForCausalLM",
        "d = Path(fastdecode.__file__).parent / \"models\" / \"default\"",
        "tok = Tokenizer.from_file(str(d / \"tokenizer.json\"))",
        "model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)",
        "ids = torch.tensor([tok.encode(\"The list\").ids])  # starts with <|endoftext|>",
        "print(tok.decode(model.generate(ids, max_new_tokens=40)[0].tolist(), skip_special_tokens=True))",
        "```",
        "",
        "`config.json` holds RoPE theta both as transformers 5's `rope_parameters` and as",
        "the flat `rope_theta` key that older readers expect.",
        "",
        "## Samples",
        "",
        "Expect documentation-flavoured English with the usual tiny-model faults:",
        "greedy decoding falls into loops, and facts are made up.",
        "Via `transformers` `generate()` on the reloaded float16 files, 48 new tokens.",
        "Greedy decoding; sampled uses temperature 0.8, top-k 40, `torch.manual_seed(0)`.",
        "",
    ]
    for prompt, mode, text in samples:
        lines += [f"**{prompt!r}**, {mode}:", "", "> " + text.replace("\n", "\n> "), ""]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "src/fastdecode/models/default")
    ap.add_argument("--minutes", type=float, default=20.0,
                    help="wall-clock budget for the training loop (hard cap)")
    ap.add_argument("--steps", type=int, default=0,
                    help="exact number of steps (0: fit --minutes by timing a few steps)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=704, help="~ 4 * hidden * 2/3, rounded to 64")
    ap.add_argument("--max-positions", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--card-only", action="store_true",
                    help="skip training: re-evaluate --out and rewrite MODEL_CARD.md")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 keeps results independent of the machine")
    return ap.parse_args(argv)


def finish(args, train_docs, val_docs, tok, run: dict):
    """Evaluate and sample the files as shipped, then write the card and log.

    ``run`` holds what training measured (steps, time, val history, params,
    hyper-parameters); it is also what ``training_log.json`` keeps, so the
    card can be rebuilt later with --card-only without training again.
    """
    import transformers
    train_ids, val_ids = encode_docs(tok, train_docs), encode_docs(tok, val_docs)
    model, tok = load_back(args.out)
    val_loss = evaluate(model, val_ids, run["seq_len"])
    print(f"final val loss (fp16 reload) {val_loss:.3f}  ppl {math.exp(val_loss):.1f}", flush=True)
    samples = []
    for prompt in PROMPTS:
        for mode, sample in (("greedy", False), ("sampled", True)):
            text = generate(model, tok, prompt, sample, seed=0)
            samples.append((prompt, mode, text))
            print(f"[{mode}] {text!r}", flush=True)

    cfg = json.loads((args.out / "config.json").read_text())
    info = dict(
        run, config=cfg, val_loss=val_loss,
        rope_theta=(cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta")),
        weights_bytes=(args.out / "model.safetensors").stat().st_size,
        python=platform.python_version(), torch=torch.__version__,
        transformers=transformers.__version__,
        train_docs=len(train_docs), val_docs=len(val_docs),
        train_chars=sum(map(len, train_docs)), val_chars=sum(map(len, val_docs)),
        train_tokens=len(train_ids), val_tokens=len(val_ids),
        tokens_seen=run["steps"] * run["batch"] * run["seq_len"])
    log = {k: v for k, v in info.items() if k != "config"}
    (args.out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    # Written twice so the size it reports includes the card itself.
    for _ in range(2):
        info["dir_bytes"] = dir_size(args.out)
        write_card(args.out, info, samples)
    print(f"wrote {args.out} ({dir_size(args.out) / 1e6:.2f} MB)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    import transformers
    transformers.logging.set_verbosity_error()

    train_docs, val_docs = build_corpus(args.val_fraction, args.seed)
    print(f"corpus: {len(train_docs)} train docs ({sum(map(len, train_docs)):,} chars), "
          f"{len(val_docs)} val docs ({sum(map(len, val_docs)):,} chars)", flush=True)

    if args.card_only:  # re-describe an existing model directory, no training
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.out / "tokenizer.json"))
        keys = ("params", "steps", "train_seconds", "val_history", "command", "seq_len",
                "batch", "lr", "warmup", "weight_decay", "seed")
        log = json.loads((args.out / "training_log.json").read_text())
        finish(args, train_docs, val_docs, tok, {k: log[k] for k in keys})
        return

    tok = train_tokenizer(train_docs, args.vocab)
    train_ids, val_ids = encode_docs(tok, train_docs), encode_docs(tok, val_docs)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {len(train_ids):,} train / "
          f"{len(val_ids):,} val tokens", flush=True)

    model = make_model(args, tok.get_vocab_size())
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters", flush=True)
    steps, seconds, history = train(model, train_ids, val_ids, args)

    args.out.mkdir(parents=True, exist_ok=True)
    save_model(model, args.out)
    save_tokenizer(tok, args.out, args.max_positions)
    command = (f"python tools/train_default_model.py --steps {steps} --minutes {args.minutes:g}"
               if args.steps == steps else
               f"python tools/train_default_model.py --minutes {args.minutes:g}  "
               f"# wall-clock schedule: ran {steps} steps here")
    finish(args, train_docs, val_docs, tok, dict(
        params=params, steps=steps, train_seconds=seconds, val_history=history,
        command=command, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed))


if __name__ == "__main__":
    main()
