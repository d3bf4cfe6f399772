"""The benchmark harness's worker process (the end-to-end benchmark's
transformers peer runs in one): it answers requests in turn, and a failure
carries the worker's error, and it starts without the harness's own
OMP_WAIT_POLICY for torch. Speed itself is never asserted here."""
import os
import sys

import pytest

from fastdecode.benchmarks import harness


def test_worker_answers_each_request():
    worker = harness.Worker(
        "import json, sys\nprint(json.dumps('ready'), flush=True)\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps(json.loads(line)['n'] * 2), flush=True)\n")
    try:
        assert [worker.request(n=n) for n in (1, 5, 21)] == [2, 10, 42]
    finally:
        worker.close()


def test_worker_failure_carries_its_error():
    with pytest.raises(RuntimeError, match="worker process failed(?s:.*)ZeroDivisionError"):
        harness.Worker("1 / 0")


def test_passive_torch_respects_the_user_and_stays_out_of_workers(monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, args, env, **kw):
            seen["env"] = env
            raise OSError("stop here")

    monkeypatch.setattr("subprocess.Popen", FakePopen)
    monkeypatch.setattr(harness, "_passive_set", False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's choice
    assert harness.passive_torch() is False and harness._passive_set is False
    with pytest.raises(OSError, match="stop here"):
        harness.Worker("pass")
    assert seen["env"]["OMP_WAIT_POLICY"] == "active"  # the user's reaches the worker
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", None)  # torch already loaded: too late to set
    assert harness.passive_torch() is False
    monkeypatch.delitem(sys.modules, "torch")
    assert harness.passive_torch() is True
    assert os.environ["OMP_WAIT_POLICY"] == "passive"
    with pytest.raises(OSError, match="stop here"):
        harness.Worker("pass")
    assert "OMP_WAIT_POLICY" not in seen["env"]  # ours stays out of the worker
