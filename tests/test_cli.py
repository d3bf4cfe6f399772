"""The command line: info, bench (quick run, JSON and PNG), error paths."""
import json
import subprocess
import sys

import pytest


def fastdecode(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastdecode", *args], capture_output=True, text=True, timeout=timeout)


def test_info_json():
    r = fastdecode("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] and "numpy" in info["available"]


def test_info_text():
    r = fastdecode("info")
    assert r.returncode == 0 and "backend" in r.stdout and "simd" in r.stdout


def test_bench_quick_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    r = fastdecode("bench", "--quick", "--kernels", "softmax", "--threads", "1", "--rounds", "2",
                   "--json", str(out_json), "--plot", str(out_png))
    assert r.returncode == 0, r.stderr
    data = json.loads(out_json.read_text())
    assert data["machine"]["cores"] >= 1
    rows = data["results"]
    assert rows and all(r["kernel"] == "softmax" for r in rows)
    assert all("fastdecode-c" in r["median_s"] and r["median_s"]["fastdecode-c"] > 0 for r in rows)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    assert "| softmax |" in r.stdout  # the table


@pytest.mark.parametrize("args,needle", [
    (["bench", "--kernels", "nope"], "unknown nope"),
    (["bench", "--threads", "0", "--kernels", "softmax"], "thread counts must be >= 1"),
])
def test_bench_errors_are_one_line(args, needle):
    r = fastdecode(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
