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
    pytest.importorskip("matplotlib", reason="--plot draws with matplotlib (the bench extra)")
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


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------

def generate(*args, backend="c", stdin=None):
    return subprocess.run([sys.executable, "-m", "fastdecode", "generate", "--backend", backend, *args],
                          capture_output=True, text=True, timeout=600, input=stdin)


@pytest.mark.parametrize("mode", [["--seed", "1"], ["--greedy"]])
def test_generate_same_text_under_both_backends(mode):
    from conftest import HAVE_C

    if not HAVE_C:
        pytest.skip("the C backend is not built")
    c = generate("Once upon a time", "-n", "20", *mode, backend="c")
    np_ = generate("Once upon a time", "-n", "20", *mode, backend="numpy")
    assert c.returncode == 0 and np_.returncode == 0, c.stderr + np_.stderr
    assert c.stdout.startswith("Once upon a time") and len(c.stdout) > len("Once upon a time") + 20
    assert c.stdout == np_.stdout
    assert "generated: 20 tokens" in c.stderr and "tokens/s" in c.stderr


def test_generate_reads_stdin_and_json():
    r = generate("-n", "8", "--greedy", "--json", backend="numpy", stdin="The list\n")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["prompt"] == "The list" and len(data["token_ids"]) == 8 and data["text"]
    assert data["generated_tokens"] == 8 and data["backend"] == "numpy"


@pytest.mark.parametrize("args,needle", [
    (["-m", "/no/such/model", "hi"], "/no/such/model"),
    (["--top-p", "2", "hi"], "--top-p: must lie in (0, 1]"),
    (["--temperature", "-1", "hi"], "--temperature: must lie in [0, inf]"),
    (["--min-p", "1.5", "hi"], "--min-p: must lie in [0, 1]"),
    (["-n", "0", "hi"], "must be a positive integer"),
])
def test_generate_errors_are_one_line(args, needle):
    r = generate(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_generate_unknown_backend_is_one_line():
    r = subprocess.run([sys.executable, "-m", "fastdecode", "generate", "--backend", "gpu", "hi"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "gpu" in r.stderr
