"""The C kernels' worker pool (csrc/pool.c): parallel results equal serial
ones, with idle workers sleeping or polling, from several Python threads at
once (a busy pool runs the second caller's job alone), after fork(), with
more threads than cores; the pool starts num_threads - 1 threads and no
more; fastdecode loads no OpenMP runtime (torch's stays torch's)."""
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastdecode as fd
from fastdecode import backend as fd_backend
from conftest import requires_c

pytestmark = requires_c


@pytest.fixture
def threads():
    """Set the thread count for a test; restores count and spin after it."""
    before, spin = fd.get_num_threads(), fd.get_worker_spin()
    yield fd.set_num_threads
    fd.set_num_threads(before)
    fd.set_worker_spin(spin)


def big_inputs(seed=0):
    """Inputs above every kernel's parallel threshold."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((3, 1024), dtype=np.float32),
        "w": rng.standard_normal((1500, 1024), dtype=np.float32),  # 1.5M elements
        "b": rng.standard_normal(1500, dtype=np.float32),
        "logits": (rng.standard_normal((40, 8192), dtype=np.float32) * 4),  # 330k elements
        "long_row": (rng.standard_normal((1, (1 << 20) + 77), dtype=np.float32) * 4),  # split across threads
        "q": rng.standard_normal((1, 8, 1, 64), dtype=np.float32),
        "k": rng.standard_normal((1, 2, 2048, 64), dtype=np.float32),
        "v": rng.standard_normal((1, 2, 2048, 64), dtype=np.float32),
    }


def run_all(a):
    with fd.use_backend("c"):
        return {
            "linear": fd.linear(a["x"], a["w"], a["b"]),
            "softmax rows": fd.softmax(a["logits"]),
            "log_softmax rows": fd.log_softmax(a["logits"]),
            "softmax long row": fd.softmax(a["long_row"]),
            "attention": fd.attention(a["q"], a["k"], a["v"]),
            "sample": fd.sample(a["logits"], temperature=0.9, top_k=40, top_p=0.9, rng=3),
            "read": fd_backend._native.read_sum_f32(a["w"].reshape(-1)),
        }


# Row-wise kernels give the same bits whatever the thread count; a row split
# across threads (long softmax row, split-KV attention, the read probe) sums
# in another order: float32 rounding of sums of ~1e6 terms.
EXACT = {"linear", "softmax rows", "log_softmax rows", "sample"}


def assert_same(got, want):
    for name in want:
        if name in EXACT:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("spin_us", [0, 300])
@pytest.mark.parametrize("n", [2, 3, 8])  # 8: more threads than this machine's cores
def test_parallel_equals_serial(threads, n, spin_us):
    a = big_inputs()
    threads(1)
    want = run_all(a)
    threads(n)
    fd.set_worker_spin(spin_us)
    for _ in range(3):  # the workers start, then find the next jobs awake or asleep
        assert_same(run_all(a), want)


def test_concurrent_callers_share_the_pool(threads):
    a = big_inputs()
    threads(1)
    want = run_all(a)
    threads(2)
    fd.set_worker_spin(200)
    errors = []

    def caller():
        try:
            for _ in range(15):
                assert_same(run_all(a), want)
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)

    callers = [threading.Thread(target=caller) for _ in range(6)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in callers), "a caller hung"
    assert not errors, errors[0]


def os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_pool_starts_threads_once(threads):
    a = big_inputs()
    threads(3)
    run_all(a)
    started = os_threads()
    for _ in range(20):
        run_all(a)
    assert os_threads() == started
    threads(2)  # fewer: the extra worker idles, none is started
    run_all(a)
    assert os_threads() == started


def _child_linear(args):
    x, w, b = args
    fd.set_num_threads(2)
    with fd.use_backend("c"):
        return fd.linear(x, w, b)


@pytest.mark.skipif(sys.platform != "linux", reason="fork() start method")
def test_pool_works_in_a_forked_child(threads):
    a = big_inputs()
    threads(2)
    want = run_all(a)["linear"]  # the parent's workers are running now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_linear, ((a["x"], a["w"], a["b"]),)).get(timeout=120)
    np.testing.assert_array_equal(got, want)


def test_worker_spin_setting(threads):
    native = fd_backend._native
    fd.set_worker_spin(0)
    assert fd.get_worker_spin() == 0 and native.get_spin_ns() == 0
    fd.set_worker_spin(150)
    assert native.get_spin_ns() == 150_000
    with fd_backend.decode_spin():  # generate()'s steps: at least DECODE_SPIN_US
        assert native.get_spin_ns() == int(max(150, fd_backend.DECODE_SPIN_US) * 1000)
        with fd_backend.decode_spin():  # nested or from another thread: still on
            pass
        assert native.get_spin_ns() == int(max(150, fd_backend.DECODE_SPIN_US) * 1000)
    assert native.get_spin_ns() == 150_000 and fd.get_worker_spin() == 150
    for bad in (-1, 2e6, "10", True, None, float("nan")):
        with pytest.raises(ValueError, match="microseconds must be a number"):
            fd.set_worker_spin(bad)
    assert fd.get_worker_spin() == 150


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_fastdecode_loads_no_openmp_runtime():
    # torch brings libgomp; were fastdecode to link one too, the loader would
    # keep a single copy, and one library's settings would rule both
    code = ("import numpy as np, fastdecode as fd\n"
            "fd.set_num_threads(2)\n"
            "fd.linear(np.ones((1, 1024), np.float32), np.ones((2048, 1024), np.float32))\n"
            "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l or 'libomp' in l}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_read_ahead_in_the_weight_order(threads):
    # the decode loop's pattern: projections in a fixed order, workers
    # polling and reading the next weight between calls; same bits as serial
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal(shape, dtype=np.float32) for shape in ((1500, 1024), (1024, 1500), (3001, 1024))]
    xs = {w.shape[1]: rng.standard_normal((1, w.shape[1]), dtype=np.float32) for w in ws}
    threads(1)
    want = [fd.linear(xs[w.shape[1]], w) for w in ws]
    threads(2)
    fd.set_worker_spin(300)
    with fd.use_backend("c"), fd_backend.weight_order(ws):
        assert fd_backend._order_owner is not None
        with fd_backend.weight_order(ws[:1]):  # a second loop meanwhile runs without the order
            pass
        assert fd_backend._order_owner is not None
        for _ in range(5):
            for w, expected in zip(ws, want):
                np.testing.assert_array_equal(fd.linear(xs[w.shape[1]], w), expected)
    assert fd_backend._order_owner is None
    assert fd_backend._native.get_spin_ns() == 300_000


def test_thread_count_is_clamped_and_oversubscription_warns(threads):
    native = fd_backend._native
    with pytest.warns(RuntimeWarning, match="threads on .* cores"):
        got = threads(1000)
    assert got == native.MAX_THREADS == 256 and fd.get_num_threads() == 256
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the cores: no warning
        assert threads(cores) == cores


@pytest.mark.parametrize("spin_us", [0, 300])
def test_a_job_wakes_only_the_workers_it_uses(threads, spin_us):
    """A 2-row sampling call after set_num_threads(8) runs on 2 threads: it
    hands one job to one worker, not to each of the 7 started ones."""
    native = fd_backend._native
    a = big_inputs()
    threads(8)
    fd.set_worker_spin(spin_us)
    logits = a["logits"][:2].repeat(4, axis=1)  # 2 rows x 32768: above the sampler's parallel threshold
    with fd.use_backend("c"):
        before = native.pool_worker_jobs()
        fd.softmax(a["logits"])  # 40 rows on 8 threads: starts 7 workers
        assert native.pool_worker_jobs() - before == 7
        before = native.pool_worker_jobs()
        want = fd.sample(logits, temperature=0.9, top_k=40, rng=1)
        assert native.pool_worker_jobs() - before == 1
    threads(1)
    with fd.use_backend("c"):
        np.testing.assert_array_equal(fd.sample(logits, temperature=0.9, top_k=40, rng=1), want)
