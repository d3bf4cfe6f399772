"""The benchmark harness's worker process (the end-to-end benchmark's
transformers peer runs in one): torch there runs on its own OpenMP runtime,
a failure carries the worker's error, and it starts without fastdecode's own
OpenMP wait policy. Speed itself is never asserted here."""
import sys

import pytest

from fastdecode import backend
from fastdecode.benchmarks import harness

pytest.importorskip("torch", reason="the worker exists for PyTorch")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps; torch links GNU OpenMP on Linux")
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
