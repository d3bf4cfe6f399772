"""A short coverage-guided fuzzing run (atheris) over the C backend's entry
points: tools/fuzz_atheris.py for a fixed time budget must end cleanly."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import requires_c

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fuzz_atheris.py"
BUDGET_S = int(os.environ.get("FASTDECODE_FUZZ_SECONDS", "20"))


@requires_c
def test_atheris_budget_runs_clean(tmp_path):
    pytest.importorskip("atheris", reason="atheris is in the test extra; install it to fuzz")
    if not SCRIPT.exists():
        pytest.skip("not running from a source checkout")
    r = subprocess.run([sys.executable, str(SCRIPT), f"-max_total_time={BUDGET_S}", "-print_final_stats=1",
                        f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=BUDGET_S + 120)
    tail = r.stderr[-3000:]
    assert r.returncode == 0, tail
    runs = int(re.search(r"Done (\d+) runs", r.stderr).group(1))
    assert runs > 1000, tail
    print(f"atheris: {runs} executions in {BUDGET_S} s, no finding")
