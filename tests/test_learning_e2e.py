"""Learning at run time, end to end on a worker that cannot see the host's Python.

tests/e2e/learning/script.py runs three apps whose needs the analysis cannot see. The first
run learns sqlalchemy and idna and still returns right results; a second run in a new process
with the same cache builds the complete envs first and needs one attempt per task; a module
that exists nowhere fails at once, without rebuilds. ``table`` runs serverless and ``computed``
regular, so both exec modes learn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "learning"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"
RETRY = "sending it again with env"




def _run(tmp_path: Path, name: str, cache: Path) -> tuple[dict, str]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    env = {**os.environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(cache),
           "WORKER": str(HIDDEN_WORKER), "N": "2",
           "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / f"wcache-{name}")}
    proc = subprocess.run([sys.executable, str(SCENARIO / "script.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=850)  # run twice
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), (run_dir / "user.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # above the script's own timeout, so its output is kept
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
def test_apps_learn_what_they_missed_and_remember_it(tmp_path: Path) -> None:
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    cache = tmp_path / "cache"
    expected = {"table": [0, 1], "computed": ["poncho0", "poncho1"]}

    first, log = _run(tmp_path, "first", cache)
    assert first["results"] == expected
    assert log.count(RETRY) == 4, log  # each task of the two learning apps, once
    assert "needed module 'sqlalchemy' at run time (distribution 'sqlalchemy')" in log
    assert "needed module 'idna' at run time (distribution 'idna')" in log
    name, message, seconds = first["nowhere"]
    assert name == "ModuleNotFoundError" and "poncho_exists_nowhere" in message
    assert seconds < 60

    second, log = _run(tmp_path, "second", cache)
    assert second["results"] == expected
    assert log.count(RETRY) == 0 and "needed module" not in log  # one attempt per task
    assert second["nowhere"][0] == "ModuleNotFoundError"
    learnt = sorted(p.name for p in (cache / "learnt").iterdir())
    assert len(learnt) == 2 and any(n.startswith("__main__.table-") for n in learnt), learnt
