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
:func:`set_num_threads`, else ``OMP_NUM_THREADS``, else every core this
process may run on. What idle worker threads do between two kernel calls:
:func:`set_worker_spin` (``FASTDECODE_WORKER_SPIN_US``).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import types

from . import reference

__all__ = [
    "BACKENDS", "set_backend", "get_backend", "use_backend", "backend_info",
    "set_simd", "get_simd", "set_num_threads", "get_num_threads", "set_worker_spin", "get_worker_spin",
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
    """Threads the C kernels may use, the caller's included. Returns the count in use."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    return 1 if _native is None else _native.set_num_threads(n)


def get_num_threads() -> int:
    return 1 if _native is None else _native.get_num_threads()


def default_num_threads(environ=os.environ) -> int:
    """FASTDECODE_NUM_THREADS, else OMP_NUM_THREADS (its first entry), else the
    cores this process may run on. A pure function of ``environ`` and the
    process's CPU affinity, so tests can check it."""
    for var in ("FASTDECODE_NUM_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# Idle workers: poll or sleep (csrc/pool.c)
# ---------------------------------------------------------------------------

# Between two parallel kernel calls a worker thread either sleeps (waking it
# costs the next call 20-100 us) or polls (it answers at once but holds a
# core). Polling pays in a loop of fastdecode calls with Python between them,
# and hurts where the gap is another library's threaded work: a NumPy matmul
# (OpenBLAS) then finds its core taken. So workers sleep at once unless the
# user says otherwise, and generate() polls for DECODE_SPIN_US during its own
# decode steps, where no other threads run.
DECODE_SPIN_US = 300.0
_spin_lock = threading.Lock()
_spin_us = 0.0  # the user's setting
_decoders = 0  # decode loops running now (generate() in any thread)


def _apply_spin() -> None:
    if _native is not None:
        us = max(_spin_us, DECODE_SPIN_US) if _decoders else _spin_us
        _native.set_spin_ns(int(us * 1000))


def set_worker_spin(microseconds: float) -> None:
    """How long an idle worker thread polls for the next kernel call before
    it sleeps, in microseconds (0, the default: sleep at once).

    Worth it (docs/tuning.md) in a decode loop whose only
    threaded work is fastdecode's; harmful where the gaps between
    fastdecode calls run other threaded code (a NumPy matmul on the same
    cores). ``generate()`` and ``stream()`` poll for their own decode steps
    whatever this says."""
    if isinstance(microseconds, bool) or not isinstance(microseconds, (int, float)) \
            or not 0 <= microseconds <= 1e6:
        raise ValueError(f"microseconds must be a number in [0, 1e6]; got {microseconds!r}")
    global _spin_us
    with _spin_lock:
        _spin_us = float(microseconds)
        _apply_spin()


def get_worker_spin() -> float:
    """The user's setting of :func:`set_worker_spin`, in microseconds."""
    return _spin_us


@contextlib.contextmanager
def decode_spin():
    """Workers poll for at least DECODE_SPIN_US while the block runs (a decode step)."""
    global _decoders
    with _spin_lock:
        _decoders += 1
        _apply_spin()
    try:
        yield
    finally:
        with _spin_lock:
            _decoders -= 1
            _apply_spin()


_order_owner = None  # the thread whose decode loop lent the pool its weight order


@contextlib.contextmanager
def weight_order(weights: list):
    """While the block runs, idle workers read ahead in ``weights`` (the
    matrices a decode step reads, in order: csrc/pool.c). One decode loop
    holds the order at a time; one in another thread meanwhile runs without."""
    global _order_owner
    with _spin_lock:
        mine = _native is not None and _order_owner is None
        if mine:
            _native.set_weight_order(list(weights))
            _order_owner = threading.get_ident()
    try:
        yield
    finally:
        if mine:
            with _spin_lock:
                _native.set_weight_order([])
                _order_owner = None


if _native is not None:
    try:
        set_simd(os.environ.get("FASTDECODE_SIMD"))
    except ValueError as exc:
        # a typo in the environment must not make the package unimportable
        import warnings

        warnings.warn(f"{exc}; using the best level the CPU supports", RuntimeWarning, stacklevel=2)
        set_simd(None)
    _native.set_num_threads(default_num_threads())
    try:
        set_worker_spin(float(os.environ.get("FASTDECODE_WORKER_SPIN_US", "0") or 0))
    except ValueError as exc:
        import warnings

        warnings.warn(f"FASTDECODE_WORKER_SPIN_US: {exc}; workers sleep at once", RuntimeWarning, stacklevel=2)


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
        "threads_supported": None if _native is None else _native.threads_supported(),
        "num_threads": get_num_threads(),
        "worker_spin_us": get_worker_spin(),
        "cpu_count": os.cpu_count(),
        "build_flags": None if _native is None else _native.build_flags(),
    }
    return info
