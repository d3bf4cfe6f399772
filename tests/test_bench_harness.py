"""The benchmark harness's worker process (the end-to-end benchmark's
transformers peer runs in one): it answers requests in turn, and a failure
carries the worker's error. Speed itself is never asserted here."""
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
