"""Array allocation for the kernels' hot inputs.

NumPy places large arrays 16 bytes past a 64-byte boundary, so every 64-byte
vector load of a row then spans two cache lines, which slows the attention
kernel measurably (docs/tuning.md): allocate long-lived caches with
:func:`empty_aligned`.

Large arrays also go on transparent huge pages where Linux offers them
(``madvise(MADV_HUGEPAGE)``): a decode step streams hundreds of MiB through a
few sequential read streams, and 2 MiB pages spare the TLB a miss every 4 KiB
(measured with bench/huge_pages.py: docs/tuning.md). Only
whole 2 MiB ranges inside the array are advised, so no memory is spent on
padding.
``FASTDECODE_HUGE_PAGES=0`` turns this off.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

__all__ = ["empty_aligned", "zeros_aligned"]

HUGE_PAGE = 2 << 20  # the transparent huge page of x86-64 (and of aarch64 with 4 KiB pages)


def _huge_pages_on(nbytes: int) -> bool:
    return (nbytes >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE")
            and os.environ.get("FASTDECODE_HUGE_PAGES", "1").strip() != "0")


def _huge_page_bytes(nbytes: int, alignment: int) -> np.ndarray:
    """uint8 [nbytes] of private anonymous memory whose first byte sits on an
    ``alignment`` (>= HUGE_PAGE) boundary, every whole huge page of it advised
    MADV_HUGEPAGE; the pages before and after are never touched, so never
    backed."""
    try:
        m = mmap.mmap(-1, nbytes + alignment, flags=mmap.MAP_PRIVATE)  # private: anonymous THP, not shmem's
    except OSError as exc:  # what np.empty would raise
        raise MemoryError(f"empty_aligned: cannot allocate {nbytes} bytes: {exc}") from None
    raw = np.frombuffer(m, np.uint8)
    start = -raw.ctypes.data % alignment
    whole = nbytes // HUGE_PAGE * HUGE_PAGE
    try:
        m.madvise(mmap.MADV_HUGEPAGE, start, whole)
    except OSError:  # a kernel without THP: 4 KiB pages, as np.empty gives
        pass
    return raw[start:start + nbytes]


def empty_aligned(shape, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose first element sits on an ``alignment``-byte
    boundary (a power of two, at least the dtype's item size). With a row size
    that is a multiple of ``alignment`` (D = 16, 32, 64, 128... float32), every
    row is aligned too. Like ``np.empty``, the contents are arbitrary::

        k_cache = fd.empty_aligned((layers, B, Hkv, max_len, D))
        k_cache[...] = 0

    Arrays of 2 MiB or more start on a 2 MiB boundary and, on Linux, are
    advised onto transparent huge pages (see the module's notes;
    ``FASTDECODE_HUGE_PAGES=0`` turns that off).
    """
    dtype = np.dtype(dtype)
    _check_alignment(alignment, dtype)
    return _aligned(shape, dtype, alignment, zeroed=False)


def zeros_aligned(shape, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """``np.zeros(shape, dtype)`` placed as :func:`empty_aligned` places it.
    Arrays of 2 MiB or more come zeroed from the kernel page by page as they
    are first written (no pass of zeros over them: a KV cache allocated per
    ``generate()`` call costs nothing before the prompt fills it)."""
    dtype = np.dtype(dtype)
    _check_alignment(alignment, dtype)
    return _aligned(shape, dtype, alignment, zeroed=True)


def _check_alignment(alignment, dtype):
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1 \
            or alignment & (alignment - 1) or alignment < dtype.itemsize:
        raise ValueError(f"alignment must be a power of two >= the item size {dtype.itemsize}; got {alignment!r}")


def _aligned(shape, dtype, alignment, zeroed):
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    if any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 for n in shape):
        raise ValueError(f"shape must be non-negative ints; got {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if _huge_pages_on(nbytes):  # fresh anonymous pages: zero already
        raw = _huge_page_bytes(nbytes, max(alignment, HUGE_PAGE))
    else:
        raw = (np.zeros if zeroed else np.empty)(nbytes + alignment, dtype=np.uint8)
        start = -raw.ctypes.data % alignment
        raw = raw[start:start + nbytes]
    return raw.view(dtype).reshape(shape)
