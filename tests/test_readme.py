"""The README is the front door: every Python block in it runs on its own,
in a fresh namespace (a reader copies one block, not the page), and every
`$ fastdecode ...` line of its console blocks runs and exits 0
(network-free: the embedded model ships in the package)."""
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


def test_the_readme_has_python_examples():
    assert len(blocks("python")) >= 3


# the scale-out examples' peers (the test extra installs them; fastdecode's own install does not)
PEERS = {"ray": "ray", "dask": "dask", "distributed": "distributed", "pandas": "pandas"}


@pytest.mark.parametrize("index", range(len(blocks("python")) if README.exists() else 0))
def test_python_block_runs_on_its_own(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = blocks("python")[index]
    for module in re.findall(r"^(?:import|from) (\w+)", block, flags=re.M):
        if module in PEERS:
            pytest.importorskip(PEERS[module], reason=f"the example runs on {module} (fastdecode[ray] / [dask])")
    # run as a script is run: __main__ (a Dask example guards its cluster as scripts must)
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "__main__"})


def test_the_readme_is_a_front_door():
    """Studies and run logs live in docs/ (issue 19): the README stays short."""
    assert len(README.read_text().splitlines()) <= 320  # the front door: ~300 lines


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
    if "--plot" in argv:
        pytest.importorskip("matplotlib", reason="--plot draws with matplotlib (the bench extra)")
    # `fastdecode` is the installed script; run the same entry point with this interpreter
    r = subprocess.run([sys.executable, "-m", "fastdecode", *argv[1:]], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr[-2000:]
