"""fastdecode.empty_aligned: alignment, and transparent huge pages for large
arrays (Linux, where the kernel offers them), off with FASTDECODE_HUGE_PAGES=0.
What huge pages buy is measured in bench/, not asserted here."""
import mmap
import pathlib
import re
import sys

import numpy as np
import pytest

import fastdecode as fd
from fastdecode import arrays

THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode():
    """'always', 'madvise' or 'never' (the bracketed word), or None without THP."""
    try:
        return re.search(r"\[(\w+)\]", THP_MODE.read_text()).group(1)
    except (OSError, AttributeError):
        return None


def thp_eligible(a: np.ndarray):
    """The kernel's THPeligible flag for the mapping holding a's first byte, or None when not reported."""
    addr, inside = a.ctypes.data, False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            elif inside and line.startswith("THPeligible:"):
                return int(line.split()[1])
    return None


needs_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE")
                               or thp_mode() in (None, "never"),
                               reason="transparent huge pages are a Linux feature, and this kernel has them off")

LARGE = (12, 12, 1024, 64)  # a GPT-2 layer stack's K cache, 36 MiB


def test_large_arrays_start_on_a_huge_page_and_behave_like_np_empty(monkeypatch):
    monkeypatch.delenv("FASTDECODE_HUGE_PAGES", raising=False)
    a = fd.empty_aligned(LARGE)
    assert a.shape == LARGE and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % 64 == 0
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert a.ctypes.data % arrays.HUGE_PAGE == 0
    a[...] = 1.5
    assert float(a.sum(dtype=np.float64)) == 1.5 * a.size
    b = fd.empty_aligned((3, 5 << 20), np.float64, 4 << 20)  # an alignment above the huge page is kept
    assert b.ctypes.data % (4 << 20) == 0 and b.nbytes == 3 * (5 << 20) * 8


@needs_thp
def test_large_arrays_are_advised_onto_huge_pages(monkeypatch):
    monkeypatch.delenv("FASTDECODE_HUGE_PAGES", raising=False)
    a = fd.empty_aligned(LARGE)
    a[...] = 0
    eligible = thp_eligible(a)
    if eligible is None:
        pytest.skip("this kernel's smaps does not report THPeligible")
    assert eligible == 1


@needs_thp
def test_huge_pages_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FASTDECODE_HUGE_PAGES", "0")
    a = fd.empty_aligned(LARGE)
    a[...] = 0
    assert a.ctypes.data % 64 == 0 and a.flags.writeable
    if thp_mode() == "madvise":  # under "always" every mapping is eligible anyway
        assert thp_eligible(a) in (0, None)


def test_small_arrays_stay_ordinary(monkeypatch):
    monkeypatch.delenv("FASTDECODE_HUGE_PAGES", raising=False)
    a = fd.empty_aligned((100, 64))  # 25 KiB
    assert a.ctypes.data % 64 == 0 and isinstance(a.base, np.ndarray) and a.base.base is None


def test_model_matrices_are_aligned_read_only_float32():
    from fastdecode import model as fd_model

    w = fd.load(fd_model.DEFAULT_MODEL_DIR).weights
    for m in w.decode_order() + [w.embed]:
        assert m.dtype == np.float32 and m.flags.c_contiguous and not m.flags.writeable
        assert m.ctypes.data % 64 == 0


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="the huge-page path is Linux's")
def test_a_failed_mapping_is_a_memory_error(monkeypatch):
    monkeypatch.delenv("FASTDECODE_HUGE_PAGES", raising=False)

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(arrays.mmap, "mmap", refuse)
    with pytest.raises(MemoryError, match="empty_aligned"):
        fd.empty_aligned(LARGE)


@pytest.mark.parametrize("huge", ["1", "0"], ids=["huge-pages", "no-huge-pages"])
@pytest.mark.parametrize("shape", [(7, 33), LARGE], ids=["small", "large"])
def test_zeros_aligned_is_zero_aligned_and_writable(shape, huge, monkeypatch):
    """Large arrays come from fresh anonymous pages (zero without a pass of
    zeros); small ones, and every array with huge pages off, from np.zeros."""
    monkeypatch.setenv("FASTDECODE_HUGE_PAGES", huge)
    for _ in range(3):  # memory handed back and taken again is still zero
        a = arrays.zeros_aligned(shape)
        assert a.shape == shape and a.dtype == np.float32 and a.ctypes.data % 64 == 0 and a.flags.writeable
        assert not a.any()
        a[...] = 3.0
        del a
    with pytest.raises(ValueError, match="alignment"):
        arrays.zeros_aligned(shape, alignment=48)
