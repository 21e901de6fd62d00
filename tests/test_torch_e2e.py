"""PyTorch end to end: the biggest environment users have, built from where torch came from.

torch ``2.13.0+cpu`` is installed on this host from the wheel directory that the host's pip
configuration names (PIP_FIND_LINKS); PyPI has no ``+cpu`` builds. With no option set, the
executor's build follows that configuration, ships the env to a worker that cannot see the host
Python, and runs the app in both exec modes (serverless preloads torch). A hermetic executor's
build of the same app fails with an error that names the ``+cpu`` label and the option to add.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "torch_app"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
def test_torch_app_builds_from_the_users_pip_configuration(tmp_path: Path) -> None:
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    try:
        import torch
    except ImportError:
        torch = None
    require(torch is not None and torch.__version__.endswith("+cpu"),
            "torch 2.13.0+cpu is not installed (make setup installs it from the lock)")
    run_dir, worker_cache = tmp_path / "runinfo", tmp_path / "wcache"
    run_dir.mkdir()
    env = {**os.environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(tmp_path / "cache"),
           "WORKER": str(HIDDEN_WORKER), "PARSL_PONCHO_WORKER_CACHE": str(worker_cache)}
    proc = subprocess.run([sys.executable, str(SCENARIO / "script.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    for mode in ("regular", "serverless"):
        results = report[mode]
        assert [r["trace"] for r in results] == [
            float(sum((i * n + j) * (j * n + i) for i in range(n) for j in range(n)))
            for n in (3, 4, 5)]
        for r in results:
            assert r["version"] == report["host_version"] == torch.__version__
            assert r["prefix"].startswith(str(worker_cache)) and r["pyenv"] == []
            forked = "function_server.py" in r["parent"]  # a call of the node's server
            assert forked is (mode == "serverless"), (mode, r["parent"])
        if mode == "serverless":
            assert all(r["preloaded"] for r in results)  # the server imported torch once
    assert report["regular_hash"] == report["serverless_hash"]  # one env for both modes

    kind, message = report["hermetic_error"]
    assert kind == "BuildError"
    assert "+cpu" in message and "https://download.pytorch.org/whl/cpu" in message
    assert "PipSources(extra_index_urls=" in message and "hermetic" in message
    assert "last lines of the pip step's output" in message and "full log: " in message
    log_path = Path(message.split("full log: ")[1].split()[0])
    assert log_path.is_file() and "torch==2.13.0+cpu" in log_path.read_text()
