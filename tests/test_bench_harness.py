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


def test_probes_take_turns_with_the_contenders_and_stay_out_of_the_table():
    calls = []
    case = harness.Case("demo", "demo case", {"fastdecode-c": lambda: calls.append("c"),
                                              "other": lambda: calls.append("o")},
                        params={"n": 1}, probes={"bandwidth": lambda: calls.append("p")})
    rows = harness.run([case], [1, 2], rounds=3, sample_s=0.0)
    assert [r["threads"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row["median_s"]) == {"fastdecode-c", "other"} and set(row["speedup"]) == {"other"}
        assert set(row["probe_s"]) == {"bandwidth"} and row["probe_s"]["bandwidth"] > 0
        assert "bandwidth" not in harness.table([row])
    # two calls each to size a sample, then one sample (sample_s 0: one call)
    # per round, interleaved: the probe runs between the contenders' samples
    assert calls.count("p") == calls.count("c") == calls.count("o") == 2 * (2 + 3)
    timed = calls[6:6 + 9]  # first thread count, after the sizing calls
    assert all(sorted(timed[i:i + 3]) == ["c", "o", "p"] for i in range(0, 9, 3))
    # each row owns its params: notes written into one row do not leak into another
    rows[0]["params"]["x"] = 1
    assert "x" not in rows[1]["params"] and case.params == {"n": 1}


def test_a_probe_cannot_take_a_contenders_name():
    case = harness.Case("demo", "clash", {"fastdecode-c": lambda: None}, probes={"fastdecode-c": lambda: None})
    with pytest.raises(ValueError, match="probe"):
        harness.time_case(case, 1, 0.0)


def test_attention_notes_use_the_probe_of_their_own_row():
    from fastdecode.benchmarks import attention

    def row(threads, c_s, probe_s):
        return {"kernel": "attention", "case": "decode", "threads": threads, "baseline": "fastdecode-c",
                "params": {"kv_bytes": 10**9, "probe_bytes": 2 * 10**9},
                "median_s": {"fastdecode-c": c_s, attention.FLOOR: c_s / 2}, "probe_s": {attention.PROBE: probe_s}}

    rows = [row(1, 0.1, 0.05), row(2, 0.05, 0.04)]
    lines = attention.notes(rows)
    assert len(lines) == 2
    assert rows[0]["params"]["c_read_gbps"] == pytest.approx(10.0)
    assert rows[0]["params"]["machine_read_gbps"] == pytest.approx(40.0)
    assert rows[1]["params"]["machine_read_gbps"] == pytest.approx(50.0)
    assert rows[1]["params"]["floor_read_gbps"] == pytest.approx(40.0)
    assert "25% of the machine's read bandwidth" in lines[0] and "40% of the machine's read bandwidth" in lines[1]
