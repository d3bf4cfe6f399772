"""The backend registry: auto, the environment variable, use_backend per
thread, the error for a missing C backend, SIMD level selection."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastdecode as fd
from fastdecode import backend as fd_backend
from conftest import RUN_SIMD, HAVE_C, requires_c


def run_python(code, **env):
    """Run code in a fresh interpreter (the registry reads the environment at import)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTDECODE_")}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    return out


def test_auto_prefers_c():
    r = run_python("import fastdecode; print(fastdecode.get_backend())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("c" if HAVE_C else "numpy")


def test_env_var_selects_backend():
    r = run_python("import fastdecode; print(fastdecode.get_backend())", FASTDECODE_BACKEND="numpy")
    assert r.stdout.strip() == "numpy", r.stderr


def test_bad_env_var_raises_on_use_not_import():
    r = run_python("import fastdecode\ntry:\n    fastdecode.softmax([1.0])\nexcept ValueError as e:\n    print('ERR', e)",
                   FASTDECODE_BACKEND="cuda")
    assert r.returncode == 0, r.stderr
    assert "ERR FASTDECODE_BACKEND must be one of" in r.stdout


def test_missing_c_backend_is_an_error_with_the_reason():
    """Simulate an unbuilt extension by blocking its import."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fastdecode._native':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fastdecode\n"
        "print(fastdecode.get_backend())\n"
        "print(fastdecode.backend_info()['unavailable']['c'])\n"
        "try:\n"
        "    fastdecode.set_backend('c')\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "numpy"  # auto falls back, and says why
    assert "blocked for the test" in lines[1]
    assert lines[2].startswith("ERR the 'c' backend is not available") and "blocked for the test" in lines[2]
    # asked for explicitly, a missing C backend is an error that carries the reason, not a fallback
    r = run_python(code, FASTDECODE_BACKEND="c")
    assert r.returncode != 0 and "ImportError" in r.stderr and "blocked for the test" in r.stderr


def test_set_backend_and_names():
    before = fd.get_backend()
    try:
        fd.set_backend("numpy")
        assert fd.get_backend() == "numpy"
        fd.set_backend("AUTO")
        assert fd.get_backend() == ("c" if HAVE_C else "numpy")
    finally:
        fd.set_backend(before)
    with pytest.raises(ValueError, match="backend must be one of"):
        fd.set_backend("gpu")
    with pytest.raises(TypeError, match="backend must be a str"):
        fd.set_backend(1)


def test_use_backend_is_per_thread():
    """Two threads hold different backends at once; neither disturbs the other."""
    if not HAVE_C:
        pytest.skip("needs both backends")
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name):
        with fd.use_backend(name):
            barrier.wait()  # both are inside their block now
            seen[name] = [fd.get_backend() for _ in range(200)]
            fd.softmax(np.ones((2, 10), np.float32))
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("numpy", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen["numpy"]) == {"numpy"} and set(seen["c"]) == {"c"}


def test_use_backend_restores_and_nests():
    outer = fd.get_backend()
    with fd.use_backend("numpy"):
        assert fd.get_backend() == "numpy"
        if HAVE_C:
            with fd.use_backend("c"):
                assert fd.get_backend() == "c"
        assert fd.get_backend() == "numpy"
    assert fd.get_backend() == outer


def test_backend_info_fields():
    info = fd.backend_info()
    for key in ("backend", "available", "unavailable", "simd", "threads_supported", "num_threads",
                "worker_spin_us", "build_flags"):
        assert key in info
    assert "numpy" in info["available"]


# ---------------------------------------------------------------------------
# SIMD level selection
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_best,requested,expected", [
    ("avx512", None, "avx512"),
    ("avx512", "avx2", "avx2"),
    ("avx512", "portable", "portable"),
    ("avx2", "avx512", "avx2"),        # never above what the CPU has
    ("portable", "avx512", "portable"),
    ("portable", "avx2", "portable"),
    ("avx2", " AVX2 ", "avx2"),
    ("avx2", "", "avx2"),
])
def test_choose_simd_with_mocked_cpu(cpu_best, requested, expected):
    assert fd_backend._choose_simd(cpu_best, requested) == expected


def test_choose_simd_rejects_unknown():
    with pytest.raises(ValueError, match="FASTDECODE_SIMD must be one of"):
        fd_backend._choose_simd("avx512", "sse9")


@requires_c
def test_env_simd_forces_lower_level():
    r = run_python("import fastdecode; print(fastdecode.get_simd())", FASTDECODE_SIMD="portable")
    assert r.stdout.strip() == "portable", r.stderr
    r = run_python("import fastdecode; print(fastdecode.get_simd())", FASTDECODE_SIMD="bogus")
    assert r.returncode == 0 and "FASTDECODE_SIMD must be one of" in r.stderr


@requires_c
def test_c_refuses_level_above_cpu():
    """Even asked directly, the C side clamps to what the CPU supports."""
    from fastdecode import _native

    best = _native.cpu_max_level()
    try:
        assert _native.set_level("avx512") == best  # clamped to the CPU's best, whatever that is
    finally:
        fd.set_simd(RUN_SIMD)


def test_num_threads():
    before = fd.get_num_threads()
    try:
        if HAVE_C:
            assert fd.set_num_threads(3) == 3 and fd.get_num_threads() == 3
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="n must be a positive int"):
                fd.set_num_threads(bad)
    finally:
        if HAVE_C:
            fd.set_num_threads(before)


def test_default_thread_count_follows_the_environment():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert fd_backend.default_num_threads({}) == cores
    assert fd_backend.default_num_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert fd_backend.default_num_threads({"OMP_NUM_THREADS": "5,2"}) == 5  # nested lists: the outer level
    assert fd_backend.default_num_threads({"OMP_NUM_THREADS": "3", "FASTDECODE_NUM_THREADS": "2"}) == 2
    assert fd_backend.default_num_threads({"OMP_NUM_THREADS": "zero", "FASTDECODE_NUM_THREADS": "0"}) == cores


@requires_c
def test_thread_and_spin_environment_variables_apply_at_import():
    r = run_python("import fastdecode as fd; print(fd.get_num_threads(), fd.get_worker_spin())",
                   FASTDECODE_NUM_THREADS="3", FASTDECODE_WORKER_SPIN_US="120")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "120.0"]
    r = run_python("import fastdecode as fd; print(fd.get_worker_spin())", FASTDECODE_WORKER_SPIN_US="-5")
    assert r.returncode == 0 and r.stdout.strip() == "0.0"
    assert "FASTDECODE_WORKER_SPIN_US" in r.stderr  # a warning, not a failed import


@requires_c
def test_sampler_parameter_layout_is_defined_once():
    """The params array's columns: C's fd_sample_params (fastdecode.h's
    FD_SAMPLE_PARAM_FIELDS) and Python's SAMPLE_PARAMS name the same fields in
    the same order."""
    from fastdecode import _native

    assert _native.SAMPLE_PARAM_FIELDS == ("temperature", "top_k", "top_p", "min_p", "penalty", "u")
    from fastdecode import _sampling_args

    assert _sampling_args.SAMPLE_PARAMS == _native.SAMPLE_PARAM_FIELDS
