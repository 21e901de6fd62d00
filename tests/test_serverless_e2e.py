"""Serverless mode end to end, as a user runs it, on a worker that cannot see the host's Python.

The scenario (tests/e2e/serverless_mix/script.py) mixes serverless apps, a regular one (per-app
``exec_mode``), failing apps, staged files and a bash app in one workflow; the worker is
started by tests/e2e/three_apps/hidden_worker.sh (host Python and checkout behind tmpfs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "serverless_mix"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"




@pytest.mark.slow
@pytest.mark.timeout(1800)  # above the script's own timeout, so its output is kept
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
def test_serverless_and_regular_apps_in_one_workflow(tmp_path: Path) -> None:
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    run_dir, worker_cache = tmp_path / "runinfo", tmp_path / "wcache"
    scratch = tmp_path / "scratch"
    run_dir.mkdir()
    scratch.mkdir()
    env = {**os.environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(tmp_path / "cache"),
           "WORKER": str(HIDDEN_WORKER), "PARSL_PONCHO_WORKER_CACHE": str(worker_cache),
           "N": "6"}
    proc = subprocess.run([sys.executable, str(SCENARIO / "script.py")], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    expected = [sum(i * i for i in range(n + 3)) ** 0.5 for n in range(6)]
    served = report["serverless"]
    assert [round(r["value"], 9) for r in served] == [round(v, 9) for v in expected]
    for r in served:
        assert "function_server.py" in r["parent"], r["parent"]  # forked by the server
        assert r["prefix"].startswith(str(worker_cache)), r["prefix"]
        assert r["saw_checkout"] is False and r["pyenv"] == []
        assert r["seen"] == 0 and r["leaked_env"] is None  # nothing survives a call
    assert len({r["cwd"] for r in served}) == 6  # each call in its own task sandbox
    for r in report["regular"]:
        assert "function_server.py" not in r["parent"], r["parent"]
        assert r["prefix"].startswith(str(worker_cache)) and r["seen"] == 0
    assert len(report["hashes"]) == 1 and len(report["hashes"][0]) == 64

    assert report["errors"] == {"value": ["ValueError", "bad value 7"], "key": ["KeyError",
                                                                               "'key'"]}
    sandbox, text = report["staged"]
    assert text == "STAGED TEXT\n" and sandbox.startswith("t.")
    assert report["bash"] == [0, "hello poncho\n"]

    # one function server per env that served calls (where's, fail's, shout's), beside it
    (env_hash,) = report["hashes"]
    servers = [p.name for p in worker_cache.iterdir() if p.name.endswith(".server-v1")]
    assert len(servers) == 3, servers
    assert len([s for s in servers if s.startswith(f"env-{env_hash}-")]) == 1, servers
