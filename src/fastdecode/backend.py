"""The backend registry: which implementation of the kernels runs.

Two backends implement the same kernels: ``"numpy"`` (the pure-NumPy
reference in :mod:`fastdecode.reference`, always available) and ``"c"``
(the compiled extension :mod:`fastdecode._native`). ``"auto"`` means ``"c"``
when it imports, else ``"numpy"``.

The default comes from the ``FASTDECODE_BACKEND`` environment variable, or
``"auto"``; :func:`set_backend` changes it for the whole process and
:func:`use_backend` for one block of code in one thread (a context
variable, so threads and asyncio tasks do not disturb each other).

The SIMD level of the C kernels is chosen at import from what the CPU
supports; ``FASTDECODE_SIMD=portable|avx2|avx512`` (or :func:`set_simd`)
forces a lower one. Threads: ``FASTDECODE_NUM_THREADS`` or
:func:`set_num_threads`, else OpenMP's default (``OMP_NUM_THREADS`` or all
cores).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import types

from . import reference

__all__ = [
    "BACKENDS", "set_backend", "get_backend", "use_backend", "backend_info",
    "set_simd", "get_simd", "set_num_threads", "get_num_threads",
]

BACKENDS = ("numpy", "c")
SIMD_LEVELS = ("portable", "avx2", "avx512")

# ---------------------------------------------------------------------------
# The backends themselves: namespaces of kernels with one calling convention
# (see fastdecode.ops: inputs already validated, C-contiguous, outputs given).
# ---------------------------------------------------------------------------

_numpy_backend = reference.backend
_c_backend = None
_c_error: str | None = None

# GNU OpenMP keeps idle worker threads spinning (without yielding) for
# GOMP_SPINCOUNT iterations after each parallel region, 300,000 by default:
# milliseconds. Where a NumPy matmul (OpenBLAS, its own threads) follows a
# parallel kernel, as in a user's own decode loop, those spinners hold the
# cores OpenBLAS needs: a 0.08 ms matmul+softmax step took 8 ms on a 2-core
# machine (bench/openmp_spin.py). So idle workers sleep at once, and the
# kernels go parallel only when the work repays a wake-up (20-100 us). The
# price, measured: a short spin (GOMP_SPINCOUNT=10000) made fastdecode's own
# GPT-2 decode at 2 threads ~9% faster (8 of 8 alternating runs), but the
# same matmul+softmax step 0.78 ms instead of 0.27 ms, and a 2-thread
# decode attention call (12 heads, 1024 keys) interleaved with NumPy's
# matmuls 1.06 ms instead of 0.40 ms: users' decode loops come first.
# libgomp reads this once, when it is loaded, so it applies when fastdecode
# loads it first (torch shares the same libgomp.so.1: whichever loads first
# sets it for both); the user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
OMP_WAIT_POLICY_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if OMP_WAIT_POLICY_SET:
    os.environ["OMP_WAIT_POLICY"] = "passive"
try:
    from . import _native
except ImportError as exc:  # not built, or built for another platform
    _native = None
    _c_error = f"{type(exc).__name__}: {exc}"
else:
    from . import _cbackend
    _c_backend = _cbackend.backend

_BY_NAME = {"numpy": _numpy_backend, "c": _c_backend}


def _resolve(name: str, source: str = "backend") -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, one of 'auto', 'numpy', 'c'; got {type(name).__name__}")
    key = name.strip().lower()
    if key == "auto":
        return "c" if _c_backend is not None else "numpy"
    if key not in BACKENDS:
        raise ValueError(f"{source} must be one of 'auto', 'numpy', 'c'; got {name!r}")
    if key == "c" and _c_backend is None:
        raise ImportError(f"the 'c' backend is not available: {_c_error}")
    return key


_global_name: str | None = None  # resolved lazily, so a bad env var raises on use, not on import
_local_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastdecode_backend", default=None)


def get_backend() -> str:
    """Name of the backend in use here: ``"numpy"`` or ``"c"``."""
    name = _local_name.get()
    if name is not None:
        return name
    global _global_name
    if _global_name is None:
        _global_name = _resolve(os.environ.get("FASTDECODE_BACKEND", "auto"), "FASTDECODE_BACKEND")
    return _global_name


def active() -> types.SimpleNamespace:
    """The kernels of the backend in use (what ``fastdecode.ops`` calls)."""
    return _BY_NAME[get_backend()]


def set_backend(name: str) -> None:
    """Use backend ``name`` ('auto', 'numpy' or 'c') from now on, in every thread
    that has not chosen one with :func:`use_backend`."""
    global _global_name
    _global_name = _resolve(name)


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("numpy"): ...`` runs the block with that backend,
    in this thread (or asyncio task) only."""
    token = _local_name.set(_resolve(name))
    try:
        yield
    finally:
        _local_name.reset(token)


# ---------------------------------------------------------------------------
# SIMD level and threads of the C backend
# ---------------------------------------------------------------------------

def _choose_simd(cpu_best: str, requested: str | None) -> str:
    """The level to run: the requested one, never above what the CPU has.

    A pure function of its inputs, so tests can check it with any CPU."""
    if requested is None or requested.strip() == "":
        return cpu_best
    req = requested.strip().lower()
    if req not in SIMD_LEVELS:
        raise ValueError(f"FASTDECODE_SIMD must be one of {', '.join(SIMD_LEVELS)}; got {requested!r}")
    return SIMD_LEVELS[min(SIMD_LEVELS.index(req), SIMD_LEVELS.index(cpu_best))]


def set_simd(level: str | None) -> str:
    """Force the C kernels' SIMD level ('portable', 'avx2', 'avx512'); None
    restores the best the CPU supports. Returns the level now in use, which
    is lower than asked when the CPU lacks the requested one."""
    if _native is None:
        raise ImportError(f"the 'c' backend is not available: {_c_error}")
    return _native.set_level(_choose_simd(_native.cpu_max_level(), level))


def get_simd() -> str | None:
    """SIMD level of the C kernels, or None when the C backend is missing."""
    return None if _native is None else _native.get_level()


def set_num_threads(n: int) -> int:
    """Threads the C kernels may use (OpenMP). Returns the count in use."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    return 1 if _native is None else _native.set_num_threads(n)


def get_num_threads() -> int:
    return 1 if _native is None else _native.get_num_threads()


if _native is not None:
    try:
        set_simd(os.environ.get("FASTDECODE_SIMD"))
    except ValueError as exc:
        # a typo in the environment must not make the package unimportable
        import warnings

        warnings.warn(f"{exc}; using the best level the CPU supports", RuntimeWarning, stacklevel=2)
        set_simd(None)
    _env_threads = os.environ.get("FASTDECODE_NUM_THREADS", "").strip()
    _native.set_num_threads(int(_env_threads) if _env_threads.isdigit() and int(_env_threads) > 0
                            else _native.openmp_max_threads())


def backend_info() -> dict:
    """What runs and why: backends, SIMD levels, threads, build flags."""
    try:
        current = get_backend()
    except (ValueError, ImportError) as exc:
        current = f"error: {exc}"
    info = {
        "backend": current,
        "available": [n for n in BACKENDS if _BY_NAME[n] is not None],
        "unavailable": {} if _c_backend is not None else {"c": _c_error},
        "simd": get_simd(),
        "simd_cpu_best": None if _native is None else _native.cpu_max_level(),
        "simd_levels": list(SIMD_LEVELS),
        "openmp": None if _native is None else _native.openmp_enabled(),
        "num_threads": get_num_threads(),
        "cpu_count": os.cpu_count(),
        "build_flags": None if _native is None else _native.build_flags(),
    }
    return info
