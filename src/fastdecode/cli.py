"""The command line: ``fastdecode info | generate | bench``."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    import fastdecode

    info = {"version": fastdecode.__version__, **fastdecode.backend_info()}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdecode", description="Fast transformer decoding on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, backends, SIMD level, threads")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="benchmark fastdecode against NumPy, SciPy, PyTorch, transformers")
    from .benchmarks import harness

    harness.add_arguments(p)
    p.add_argument("--kernels", default="all", help="comma-separated: softmax,sampling,attention,decode (default all)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"fastdecode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
