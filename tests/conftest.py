"""Shared fixtures: run a test under each backend and each SIMD level."""
import os

import numpy as np
import pytest

import fastdecode
from fastdecode import backend as fd_backend

HAVE_C = "c" in fastdecode.backend_info()["available"]
# every level this CPU can run; the dispatcher never picks one it cannot
SIMD_LEVELS = (fd_backend.SIMD_LEVELS[: fd_backend.SIMD_LEVELS.index(fastdecode.backend_info()["simd_cpu_best"]) + 1]
               if HAVE_C else ())

# the level a run was started at (FASTDECODE_SIMD), restored after a test forces another
RUN_SIMD = os.environ.get("FASTDECODE_SIMD")

requires_c = pytest.mark.skipif(not HAVE_C, reason="the C backend is not built")
# tests that compare SIMD levels with one another need two of them to compare
requires_two_simd_levels = pytest.mark.skipif(
    len(SIMD_LEVELS) < 2, reason="this CPU (or build) runs one SIMD level only: no other level to compare with")


@pytest.fixture(params=["numpy", "c"])
def backend(request):
    """Runs the test once per backend, with that backend active."""
    if request.param == "c" and not HAVE_C:
        pytest.skip("the C backend is not built")
    with fastdecode.use_backend(request.param):
        yield request.param


@pytest.fixture(params=SIMD_LEVELS or ["none"])
def simd(request):
    """Runs the test once per SIMD level this CPU supports (C backend active)."""
    if not HAVE_C:
        pytest.skip("the C backend is not built")
    used = fastdecode.set_simd(request.param)
    assert used == request.param
    try:
        with fastdecode.use_backend("c"):
            yield request.param
    finally:
        fastdecode.set_simd(RUN_SIMD)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_terminal_summary(terminalreporter):
    """How many malformed inputs each public function received (tests/test_fuzz.py)."""
    try:
        from fuzzing import COUNTS
    except ImportError:
        return
    if COUNTS:
        terminalreporter.write_line("fuzz inputs tried per function: " +
                                    ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))
