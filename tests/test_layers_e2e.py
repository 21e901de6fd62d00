"""End to end, issue 13's loop: edit a local helper, submit again: only a code layer is built
and shipped, and the new behaviour comes back (regular and serverless mode).

The scenario (tests/e2e/layers/) is copied into a temporary workflow directory; its workers
(``hidden_worker.sh``) see neither the host's Python, nor /work/main, nor that directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tools import require

from parsl_poncho.workqueue import count_transfers

SCENARIO = Path(__file__).parent / "e2e" / "layers"
SOLVE = r"env ([0-9a-f]{12}): \[1/\d+\] solve: \d+ spec"


def _can_hide_dirs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /root/.pyenv"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(1800)  # above the script's own timeout, so its output is kept
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
@pytest.mark.parametrize("mode", ["regular", "serverless"])
def test_editing_a_helper_ships_only_a_new_code_layer(tmp_path: Path, mode: str) -> None:
    require(_can_hide_dirs(), "unshare --mount with tmpfs needs root")
    flow, run_dir = tmp_path / "flow", tmp_path / "runinfo"
    cache, worker_cache = tmp_path / "cache", tmp_path / "wcache"
    flow.mkdir()
    run_dir.mkdir()
    for name in ("script.py", "helper.py"):
        shutil.copy(SCENARIO / name, flow / name)
    env = {**os.environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(cache),
           "WORKER": str(SCENARIO / "hidden_worker.sh"), "HIDE_DIR": str(flow),
           "PARSL_PONCHO_WORKER_CACHE": str(worker_cache), "MODE": mode, "N": "3"}
    proc = subprocess.run([sys.executable, "script.py"], cwd=flow, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    # the new behaviour comes back, computed from the shipped layers with everything hidden
    expected = [float(sum(range(i + 3))) for i in range(3)]
    assert [r[0] for r in report["first"]["results"]] == expected
    assert [r[0] for r in report["second"]["results"]] == [10 * v for v in expected]
    for round_ in ("first", "second"):
        for _value, prefix, saw_flow, code_dir in report[round_]["results"]:
            assert prefix.startswith(str(worker_cache)), prefix
            assert saw_flow is False
            assert code_dir.startswith(str(worker_cache / "code")), code_dir
    layers = {r[3] for r in report["first"]["results"]}, {r[3] for r in report["second"]["results"]}
    assert len(layers[0]) == len(layers[1]) == 1 and layers[0] != layers[1]

    # one env hash per round, different (they cover the code layer); one base between them
    (first,), (second,) = report["first"]["hashes"], report["second"]["hashes"]
    assert first != second
    log = (run_dir / "user.log").read_text()
    before, after = log.split("ROUND 2 starts", 1)
    bases = re.findall(r"env ([0-9a-f]{64}) = base ([0-9a-f]{64}) \+ code ([0-9a-f]{64})", log)
    assert {b[0] for b in bases} == {first, second}
    assert len({b[1] for b in bases}) == 1, bases
    base = bases[0][1]
    assert re.findall(SOLVE, before) == [base[:12]]
    assert re.findall(SOLVE, after) == []  # 0 new base builds after the edit
    assert len(list((cache / "code").glob("code-*.tar.gz"))) == 2

    # the base tarball reached the worker once (not again after the edit); each layer once
    (debug_log,) = run_dir.glob("*/PonchoExecutor/wq/debug_log")
    sent = count_transfers(str(debug_log))
    env_sent = {k: n for k, n in sent.items() if re.search(r"env-[0-9a-f]{64}\.tar\.gz$", k[1])}
    code_sent = {k: n for k, n in sent.items() if re.search(r"code-[0-9a-f]{64}\.tar\.gz$", k[1])}
    assert list(env_sent.values()) == [1], env_sent
    assert sorted(code_sent.values()) == [1, 1], code_sent
    if mode == "serverless":
        servers = sorted(p.name for p in worker_cache.glob("*.server-v1-code-*"))
        assert len(servers) == 2, servers  # a server per code layer: old code never serves new
