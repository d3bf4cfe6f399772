"""The README is the front door: every Python block in it runs, in order,
in one namespace, and every `$ fastdecode ...` line of its console blocks
runs and exits 0 (network-free: the embedded model ships in the package)."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.skipif(not README.exists(), reason="not running from a source checkout")


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_blocks_run(tmp_path, monkeypatch):
    code = blocks("python")
    assert code, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(code):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)


def console_commands():
    """`$ fastdecode ...` lines of console blocks, and the `fastdecode ...` steps
    of bash blocks (their `pip install` steps are what tests/test_packaging.py
    does in a fresh virtual environment)."""
    cmds = []
    for block in blocks("console"):
        cmds += [line[2:] for line in block.splitlines() if line.startswith("$ fastdecode")]
    for block in blocks("bash"):
        for line in block.splitlines():
            cmds += [step.strip() for step in line.split("&&") if step.strip().startswith("fastdecode ")]
    return cmds


@pytest.mark.parametrize("command", console_commands() or ["(none)"])
def test_console_commands_run(command, tmp_path):
    if command == "(none)":
        pytest.skip("the README has no console example")
    argv = shlex.split(command)
    # `fastdecode` is the installed script; run the same entry point with this interpreter
    r = subprocess.run([sys.executable, "-m", "fastdecode", *argv[1:]], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr[-2000:]
