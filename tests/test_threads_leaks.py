"""Threads and memory: 8 Python threads calling the C kernels at once get
the serial results; the backend choice of one thread never leaks into
another; 100,000 calls of a kernel do not grow memory."""
import gc
import os
import threading
import tracemalloc

import numpy as np
import pytest

import fastdecode as fd
from conftest import requires_c

N_THREADS = 8


def kernel_calls(rng):
    """(name, zero-argument call) for every public kernel, inputs bound."""
    x = (rng.standard_normal((4, 5003)) * 3).astype(np.float32)
    q = rng.standard_normal((1, 8, 3, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 37, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 37, 64)).astype(np.float32)
    calls = [
        ("softmax", lambda: fd.softmax(x)),
        ("log_softmax", lambda: fd.log_softmax(x)),
        ("attention", lambda: fd.attention(q, k, v)),
    ]
    if hasattr(fd, "sample"):
        u_rng = 7
        calls.append(("sample", lambda: fd.sample(x, temperature=0.8, top_k=50, top_p=0.9, rng=u_rng)))
        calls.append(("argmax", lambda: fd.argmax(x)))
    return calls


@requires_c
def test_eight_threads_match_serial(rng):
    calls = kernel_calls(rng)
    with fd.use_backend("c"):
        serial = {name: call() for name, call in calls}
    results, errors = [], []
    start = threading.Barrier(N_THREADS)

    def worker():
        try:
            with fd.use_backend("c"):
                start.wait()
                for _ in range(20):
                    results.append({name: call() for name, call in calls})
        except Exception as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == N_THREADS * 20
    for res in results:
        for name, value in res.items():
            np.testing.assert_array_equal(value, serial[name], err_msg=name)


@requires_c
def test_backend_choice_stays_in_its_thread():
    flips = {"numpy": [], "c": []}
    stop = threading.Event()

    def holder(name):
        with fd.use_backend(name):
            while not stop.is_set():
                flips[name].append(fd.get_backend())

    threads = [threading.Thread(target=holder, args=(n,)) for n in ("numpy", "c")]
    for t in threads:
        t.start()
    outer = fd.get_backend()
    for _ in range(1000):
        assert fd.get_backend() == outer  # the main thread never sees theirs
    stop.set()
    for t in threads:
        t.join()
    assert set(flips["numpy"]) == {"numpy"} and set(flips["c"]) == {"c"}


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@requires_c
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc")
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "attention", "sample", "argmax"])
def test_no_leak_over_100k_calls(rng, name):
    calls = dict(kernel_calls(np.random.default_rng(0)))
    if name not in calls:
        pytest.skip(f"{name} is not part of this build yet")
    # small inputs: 100k calls stay quick, and any per-call leak shows
    small = {
        "softmax": (lambda x: lambda: fd.softmax(x))(np.ones((2, 64), np.float32)),
        "log_softmax": (lambda x: lambda: fd.log_softmax(x))(np.ones((2, 64), np.float32)),
        "attention": (lambda a: lambda: fd.attention(a, a, a))(np.ones((1, 2, 2, 16), np.float32)),
        "sample": (lambda x: lambda: fd.sample(x, temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.2,
                                               prev_tokens=[[1, 2], [3]], rng=7))(np.ones((2, 64), np.float32)),
        "argmax": (lambda x: lambda: fd.argmax(x))(np.ones((2, 64), np.float32)),
    }
    call = small.get(name, calls[name])
    with fd.use_backend("c"):
        for _ in range(2000):  # warm-up: caches, pools, first allocations
            call()
        gc.collect()
        tracemalloc.start()
        rss0 = rss_bytes()
        snap0 = tracemalloc.take_snapshot()
        for _ in range(100_000):
            call()
        gc.collect()
        grown_py = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
        rss1 = rss_bytes()
        tracemalloc.stop()
    assert grown_py < 1 << 20, f"Python allocations grew by {grown_py} bytes"
    assert rss1 - rss0 < 1 << 20, f"RSS grew by {rss1 - rss0} bytes over 100,000 calls"
