"""The command line: ``fastdecode info | generate | chat | batch | convert | bench``."""
from __future__ import annotations

import argparse
import json
import sys


def _embedded_model_info() -> dict:
    import pathlib

    directory = pathlib.Path(__file__).parent / "models" / "default"
    if not (directory / "config.json").exists():
        return {"default_model": "missing from this installation"}
    config = json.loads((directory / "config.json").read_text())
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return {"default_model": f"{config.get('architectures', ['?'])[0]}, {config.get('num_hidden_layers')} layers, "
                             f"hidden {config.get('hidden_size')}, vocab {config.get('vocab_size')}, "
                             f"{size / 1e6:.1f} MB ({directory})"}


def _cmd_info(args) -> int:
    import fastdecode

    from .formats import FORMATS
    from .model.quantize import SPECS

    info = {"version": fastdecode.__version__, **fastdecode.backend_info(), **_embedded_model_info(),
            "weight_formats": {f.name: f"{f.block_bytes} bytes per {f.block} weights" for f in FORMATS.values()},
            "weights_choices": list(SPECS)}
    if args.model is not None:  # a model's formats, as loaded with --weights
        model = _load(args.model, args.weights)
        info["model"] = model.path
        info["weights"] = args.weights or "as stored"
        info["weights_summary"] = model.weights.summary().splitlines()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        print(f"{key:<{width}}  {value}")
    return 0


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("give a prompt as an argument, or pipe it on stdin")
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text  # `echo prompt |` adds a newline nobody typed


def _configure(args):
    """--backend and --threads."""
    import fastdecode

    if args.backend:
        fastdecode.set_backend(args.backend)
    if args.threads is not None:
        fastdecode.set_num_threads(args.threads)
        try:  # NumPy's BLAS runs the prefill's matmuls; threadpoolctl is optional (bench extra)
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(args.threads)


def _settings(args) -> dict:
    """generate()'s keywords from the sampling flags."""
    return dict(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy and args.temperature > 0,
                temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                min_p=args.min_p or None, repetition_penalty=args.repetition_penalty,
                stop=args.stop or None, rng=args.seed, prompt_lookup_num_tokens=args.prompt_lookup)


def _cmd_generate(args) -> int:
    import fastdecode

    prompt = _read_prompt(args)
    _configure(args)
    model = _load(args.model, args.weights)
    # checks every setting and the context first: errors come before output
    tokens = model.stream(prompt, **_settings(args))
    out = sys.stdout
    if not args.json:
        out.write(prompt)  # as llama.cpp does: the continuation reads on from the prompt
        out.flush()
    try:
        while True:
            try:
                token = next(tokens)
            except StopIteration as done:
                result = done.value
                break
            if not args.json:
                out.write(token.text)
                out.flush()
    except KeyboardInterrupt:
        if not args.json:
            out.write("\n")  # the shell's prompt starts on a line of its own
            out.flush()
        raise
    t = result.timing
    if args.json:
        print(json.dumps({
            "prompt": prompt, "text": result.text, "token_ids": [int(i) for i in result.token_ids],
            "finish_reason": result.finish_reason, "prompt_tokens": t.prompt_tokens,
            "generated_tokens": t.generated_tokens, "prompt_tokens_per_s": t.prompt_tokens_per_s,
            "generated_tokens_per_s": t.generated_tokens_per_s, "backend": fastdecode.get_backend(),
            "weights": args.weights or "as stored",
        }, allow_nan=False))  # an undefined rate is null (Timing gives None), never NaN, which is not JSON
    else:
        out.write("\n")
        out.flush()
    print(f"prompt: {t.prompt_tokens} tokens, {_rate(t.prompt_tokens_per_s)} tokens/s | "
          f"generated: {t.generated_tokens} tokens, {_rate(t.generated_tokens_per_s)} tokens/s | "
          f"backend {fastdecode.get_backend()}, weights {args.weights or 'as stored'}, {result.finish_reason}",
          file=sys.stderr)
    return 0


def _cmd_convert(args) -> int:
    import os

    import fastdecode

    if not args.output.endswith(".gguf"):
        raise ValueError(f"{args.output}: the output of convert is a .gguf file")
    model = _load(args.model_dir)
    model.save(args.output, weights=args.weights)
    print(f"wrote {args.output} ({args.weights}, {os.path.getsize(args.output) / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def _rate(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _load(path: str, weights=None):
    """fastdecode.load, whose every failure is one line (the model named): a
    malformed file can raise from the libraries that read it."""
    import fastdecode

    try:
        return fastdecode.load(path, weights=weights)
    except (ValueError, TypeError, OSError):
        raise
    except Exception as exc:  # safetensors' and tokenizers' own error types
        raise ValueError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}") from None


def _cmd_chat(args) -> int:
    from .chat_cli import run

    _configure(args)
    return run(args, _settings(args))


def _cmd_batch(args) -> int:
    import os

    from . import batch_io
    from .generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    options = dict(max_batch=args.max_batch, prefill_chunk=args.prefill_chunk, seed=args.seed,
                   on_error=args.on_error, progress=None if args.progress is None else args.progress == "on")
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"--input {args.input}: no such file")
    if args.ray is not None:
        from . import ray as fd_ray

        engine = fd_ray.job_engine(args.model, config, address=args.ray or None, concurrency=args.concurrency,
                                   num_cpus=args.threads or 1, backend=args.backend, weights=args.weights,
                                   max_batch=args.max_batch,
                                   prefill_chunk=args.prefill_chunk, seed=args.seed)
        stats = batch_io.run_job(None, args.input, args.output, config, engine=engine, **options)
    else:
        _configure(args)
        model = _load(args.model, args.weights)
        stats = batch_io.run_job(model, args.input, args.output, config, **options)
    rate = stats["generated_tokens"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
    print(f"fastdecode batch: {stats['written']} rows written ({stats['done_before']} were already there), "
          f"{stats['generated_tokens']} tokens in {stats['seconds']:.1f} s ({rate:.1f} tokens/s), "
          f"{stats['bad']} bad line(s)", file=sys.stderr)
    return 1 if stats["bad"] else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _ranged(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value != value or value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise argparse.ArgumentTypeError(
                f"must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}; got {text}")
        return value
    return parse


def _cmd_bench(args) -> int:
    from .benchmarks import harness

    names = harness.KERNEL_MODULES if args.kernels == "all" else [k.strip() for k in args.kernels.split(",")]
    unknown = [k for k in names if k not in harness.KERNEL_MODULES]
    if unknown:
        raise ValueError(f"--kernels: unknown {', '.join(unknown)}; choose from {', '.join(harness.KERNEL_MODULES)}")
    modules = harness.available_modules(names)
    if not modules:
        raise ValueError("no benchmark modules are available in this build")
    harness.execute(args, modules)
    return 0


def _decoding_arguments(p, max_new_tokens: int):
    """The model, sampling, stopping and backend flags of generate and chat."""
    p.add_argument("-m", "--model", default="default",
                   help="Hugging Face model directory or .gguf file (default: the embedded model)")
    p.add_argument("--weights", default=None, metavar="FMT",
                   help="weight format made at load: q8_0, q4_0, q4_k_m, q4_K, q6_K, bf16, f16 (default: as stored)")
    p.add_argument("-n", "--max-new-tokens", type=_positive_int, default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=_ranged(0, float("inf")), default=0.8, help="0 means greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 disables (default 40)")
    p.add_argument("--top-p", type=_ranged(0, 1, lo_open=True), default=0.95, help="nucleus mass in (0, 1]; 1 disables (default 0.95)")
    p.add_argument("--min-p", type=_ranged(0, 1), default=0.05, help="keep p >= min_p * p_max; 0 disables (default 0.05)")
    p.add_argument("--repetition-penalty", type=_ranged(0, float("inf"), lo_open=True), default=1.0,
                   help="HF's repetition penalty; 1 disables (default 1.0)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at this text (repeatable); eos always stops")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible sampling")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads for the kernels and NumPy's BLAS")
    p.add_argument("--backend", choices=["auto", "c", "numpy"], default=None, help="kernel backend (default auto)")
    p.add_argument("--prompt-lookup", type=_positive_int, default=None, metavar="K",
                   help="prompt-lookup decoding: draft up to K tokens copied from the context (HF's "
                        "prompt_lookup_num_tokens)")


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line on stderr (``--help`` shows the usage), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="fastdecode", description="Fast transformer decoding on the CPU.")
    parser.add_argument("--version", action="version", version=f"fastdecode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("info", help="version, backends, SIMD level, threads")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-m", "--model", default=None, help="also load this model directory and list its weight formats")
    p.add_argument("--weights", default=None, help="with --model: the weight format to load it in (as generate)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("generate", help="generate text, streamed as it is made (default: the embedded model)")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read from stdin)")
    _decoding_arguments(p, 64)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("chat", help="an interactive chat in the terminal, with the model's chat template")
    _decoding_arguments(p, 512)
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    p.add_argument("--template", default=None, metavar="FILE",
                   help="a Jinja2 chat template file (default: the checkpoint's own)")
    p.add_argument("--history", default=None, metavar="FILE", help="keep the input history in FILE (readline)")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("convert", help="write a Hugging Face model directory (or a GGUF) as a GGUF file for llama.cpp")
    p.add_argument("model_dir", help="Hugging Face model directory, a .gguf file, or 'default'")
    p.add_argument("output", help="the .gguf file to write")
    from .model.gguf_write import WEIGHT_TYPES

    p.add_argument("--weights", choices=WEIGHT_TYPES, default="f16",
                   help="tensor type of the matrices, as llama.cpp's file types (default f16)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("batch", help="generate for every line of a JSONL file (continuous batching, restartable)")
    p.add_argument("-m", "--model", default="default", help="Hugging Face model directory (default: the embedded model)")
    p.add_argument("--weights", default=None, metavar="FMT", help="weight format made at load (as generate)")
    p.add_argument("--input", required=True, help='JSON lines: {"id": ..., "prompt": ... or "messages": [...], <settings>, "seed": ...}')
    p.add_argument("--output", required=True, help="JSON lines, appended; a rerun skips the ids already there")
    p.add_argument("--max-batch", type=_positive_int, default=16, help="rows decoded together (default 16)")
    p.add_argument("--prefill-chunk", type=_positive_int, default=128,
                   help="prompt tokens prefilled between two decode steps (default 128)")
    p.add_argument("-n", "--max-new-tokens", type=_positive_int, default=64,
                   help="tokens per row unless its line says (default 64)")
    p.add_argument("--seed", type=int, default=None,
                   help="base seed: a row without its own seed draws from default_rng([seed, hash of its id])")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="a bad line stops the run after the rows in flight, or is skipped (reported either way)")
    p.add_argument("--progress", choices=["on", "off"], default=None, help="progress bar (default: on a terminal)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for the kernels and NumPy's BLAS (with --ray: CPUs per actor)")
    p.add_argument("--backend", choices=["auto", "c", "numpy"], default=None, help="kernel backend (default auto)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (ray.init(address); a local one without ADDRESS)")
    p.add_argument("--concurrency", type=_positive_int, default=None,
                   help="with --ray: model actors (default: the cluster's CPUs / --threads)")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("bench", help="benchmark fastdecode against NumPy, SciPy, PyTorch, transformers")
    from .benchmarks import harness

    harness.add_arguments(p)
    p.add_argument("--kernels", default="all", help="comma-separated: softmax,sampling,attention,linear,decode (default all)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    """Exit status: 0 done (or stdout closed early, as by ``| head``), 2 an
    error (one line on stderr), 130 interrupted (Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return status
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        _drop_stdout()
        return 0
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"fastdecode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _drop_stdout():
    """Point stdout at /dev/null, so the interpreter's last flush of what is
    still buffered for the closed pipe raises nothing (Python's docs, signal module)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
