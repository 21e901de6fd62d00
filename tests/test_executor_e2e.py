"""End to end, as a user runs it: a Parsl script on workers that cannot see the host's Python.

The scenario lives in tests/e2e/three_apps/: ``script.py`` (three apps: numpy, a helper from a
local module beside the script, a closure over a module-level object) and ``hidden_worker.sh``,
which starts ``work_queue_worker`` inside ``unshare --mount`` with tmpfs over /root/.pyenv and
/work/main. Checked: every result, one build per spec, one transfer per tarball and worker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

from parsl_poncho.workqueue import count_transfers

SCENARIO = Path(__file__).parent / "e2e" / "three_apps"




def _collatz(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@pytest.mark.slow
@pytest.mark.timeout(1800)  # above the script's own timeout, so its output is kept
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
def test_three_apps_on_workers_without_host_python(tmp_path):
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    run_dir, cache, worker_cache = tmp_path / "runinfo", tmp_path / "cache", tmp_path / "wcache"
    run_dir.mkdir()
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "PONCHO_CACHE": str(cache),
        "WORKER": str(SCENARIO / "hidden_worker.sh"),
        "PARSL_PONCHO_WORKER_CACHE": str(worker_cache),
        "N": "4",
    }
    proc = subprocess.run([sys.executable, "script.py"], cwd=SCENARIO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    # every result correct, and computed in the shipped env with the host Python hidden
    norms = report["results"]["norm"]
    expected = [sum(i * i for i in range(n + 3)) ** 0.5 for n in range(4)]
    assert [round(v[0], 9) for v in norms] == [round(v, 9) for v in expected]
    for _value, prefix, saw_checkout, pyenv_listing in norms:
        assert prefix.startswith(str(worker_cache)), prefix
        assert saw_checkout is False and pyenv_listing == []
    assert report["results"]["steps"] == [_collatz(n + 3) for n in range(4)]
    assert report["results"]["score"] == [2.0 * i + 1.0 for i in range(4)]

    # three envs; each base built exactly once (apps needing the same packages share a base,
    # the local helper rides in a code layer on top: "env H = base B + code K" in the log)
    hashes = {app: h for app, h in report["hashes"].items()}
    assert all(len(h) == 1 for h in hashes.values()), hashes
    assert len({h[0] for h in hashes.values()}) == 3
    log = (run_dir / "user.log").read_text()
    builds = re.findall(r"env ([0-9a-f]{12}): \[1/\d+\] solve: \d+ spec", log)
    layered = dict(re.findall(r"env ([0-9a-f]{64}) = base ([0-9a-f]{64}) \+ code", log))
    bases = {layered.get(h[0], h[0]) for h in hashes.values()}
    assert sorted(builds) == sorted(b[:12] for b in bases), builds

    # each tarball sent once per worker that used it; the envs reached both workers
    debug_logs = list(run_dir.glob("*/PonchoExecutor/wq/debug_log"))
    assert len(debug_logs) == 1
    sent = count_transfers(str(debug_logs[0]))
    env_sent = {k: n for k, n in sent.items() if re.search(r"env-[0-9a-f]{64}\.tar\.gz$", k[1])}
    assert env_sent and set(env_sent.values()) == {1}, env_sent
    assert len({worker for worker, _name in env_sent}) == 2, env_sent
    print("tarball transfers (worker, cached name) -> count:", json.dumps(
        {f"{w} {n}": c for (w, n), c in sorted(env_sent.items())}, indent=1))
