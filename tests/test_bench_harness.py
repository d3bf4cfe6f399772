"""The benchmark harness's worker process for PyTorch's contenders: it serves
the same cases, times them where they run, and starts without fastdecode's
own OpenMP wait policy. Speed itself is never asserted here."""
import sys

import pytest

from fastdecode import backend
from fastdecode.benchmarks import harness, softmax

pytest.importorskip("torch", reason="the worker exists for PyTorch's contenders")


def test_torch_contenders_move_to_a_worker_that_times_them():
    cases = softmax.cases(quick=True)
    worker = harness.torch_in_worker([softmax], [cases], quick=True)
    try:
        remote = cases[0].contenders["torch"]
        assert isinstance(remote, harness.Remote)
        assert not isinstance(cases[0].contenders["fastdecode-c"], harness.Remote)  # ours stay here
        assert remote.sample(1) > 0  # seconds, measured in the worker
        # 300 softmaxes of 50257 floats (200 KB read and written each) cannot take under
        # 0.1 ms (150 GB/s): the worker made the calls it was asked for
        assert remote.sample(300) > 1e-4
        rows = harness.run(cases[:1], [1], rounds=2, sample_s=0.001)
        assert rows[0]["median_s"]["torch"] > 0 and rows[0]["speedup"]["torch"] > 0
    finally:
        worker.close()
    with pytest.raises((RuntimeError, ValueError, OSError)):  # closed: no more answers
        remote.sample(1)


def test_the_worker_runs_torch_on_torchs_own_openmp_settings():
    # torch is imported first there, so its libgomp (and its settings) serve the process
    worker = harness.Worker(
        "import json, os, sys\nimport torch\nimport fastdecode\nprint(json.dumps('ready'), flush=True)\n"
        "maps = open('/proc/self/maps').read()\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps(sorted({l.split()[-1] for l in maps.splitlines() if 'libgomp' in l})), flush=True)\n")
    try:
        libs = worker.request()
    finally:
        worker.close()
    if sys.platform.startswith("linux") and libs:
        assert len(libs) == 1 and "torch" in libs[0]


def test_worker_failure_carries_its_error():
    with pytest.raises(RuntimeError, match="worker process failed(?s:.*)ZeroDivisionError"):
        harness.Worker("1 / 0")


def test_worker_environment_drops_only_fastdecodes_wait_policy(monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, args, env, **kw):
            seen["env"] = env
            raise OSError("stop here")

    monkeypatch.setattr("subprocess.Popen", FakePopen)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    for ours, kept in ((True, False), (False, True)):
        monkeypatch.setattr(backend, "OMP_WAIT_POLICY_SET", ours)
        with pytest.raises(OSError, match="stop here"):
            harness.Worker("pass")
        assert ("OMP_WAIT_POLICY" in seen["env"]) is kept
