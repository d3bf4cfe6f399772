"""Packaging: a wheel built from this checkout installs in a new virtual
environment (no system packages) and reports the C backend."""
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_in_fresh_venv(tmp_path):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTDECODE_", "PYTHON"))}
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, env=env, timeout=900)
    wheel = next(wheels.glob("fastdecode-*.whl"))
    # portable: a manylinux/linux tag for this interpreter, never built for one CPU only
    assert "-cp3" in wheel.name and ("linux" in wheel.name or "macosx" in wheel.name or "win" in wheel.name)
    # the compiled module ships; its sources (.pyx, .pxi, csrc/) stay in the sdist
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastdecode/_native.") and n.endswith((".so", ".pyd")) for n in names), names
    assert [n for n in names if n.endswith((".pyx", ".pxd", ".pxi", ".c", ".h"))] == []
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, env=env, timeout=900)
    out = subprocess.run([str(venv / "bin" / "fastdecode"), "info", "--json"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["backend"] == "c", info
    assert info["simd"] in info["simd_levels"]
    # the installed package runs a kernel, not just imports
    code = "import numpy as np, fastdecode as fd; print(float(fd.softmax(np.zeros(4, np.float32)).sum()))"
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "1.0", out.stderr
    # the README's first command, from the installed script, the same text under both backends
    texts = []
    for backend in ("c", "numpy"):
        out = subprocess.run([str(venv / "bin" / "fastdecode"), "generate", "Once upon a time", "-n", "20",
                              "--seed", "1", "--backend", backend], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stderr
        texts.append(out.stdout)
    assert texts[0] == texts[1] and texts[0].startswith("Once upon a time") and len(texts[0]) > 40
    # the embedded default model ships inside the wheel
    code = ("import importlib.resources as r; d = r.files('fastdecode') / 'models' / 'default'; "
            "print(sorted(p.name for p in d.iterdir()))")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert name in out.stdout, out.stdout + out.stderr
