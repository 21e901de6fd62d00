"""The joblib backend and PonchoPoolExecutor end to end, on a worker that cannot see the host's
Python nor this checkout (tests/e2e/layers/hidden_worker.sh), through the embedded default
executor (no Parsl config loaded): tests/e2e/joblib_futures/script.py.
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

SCRIPT = Path(__file__).parent / "e2e" / "joblib_futures" / "script.py"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "layers" / "hidden_worker.sh"
CHECKOUT = Path(__file__).resolve().parents[1]
BIG_MB = 4
PUT = re.compile(r"rx from manager: put (\S+) (\d+)")
INFILE = re.compile(r"rx from manager: infile \S+ (\S+)")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    """Run the script once: (its report, the worker's debug log, the worker cache)."""
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    tmp = tmp_path_factory.mktemp("joblib-e2e")
    log, worker_cache = tmp / "worker.log", tmp / "wcache"
    env = {**os.environ, "PONCHO_CACHE": str(tmp / "cache"), "WORKER": str(HIDDEN_WORKER),
           "HIDE_DIR": str(CHECKOUT), "WORKER_LOG": str(log), "BIG_MB": str(BIG_MB),
           "PARSL_PONCHO_WORKER_CACHE": str(worker_cache)}
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), log.read_text(), worker_cache


pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500),
              pytest.mark.skipif(not Path("/root/.pyenv").is_dir(),
                                 reason="needs the pyenv host Python")]


def test_sklearn_gives_lokys_results(run: tuple[dict, str, Path]) -> None:
    """GridSearchCV(SVC(), grid, cv=3, n_jobs=-1), cross_val_score of a
    RandomForestClassifier(n_jobs=-1) (nested: its trees are built sequentially in each task)
    and the forest's own fit (one task per batch of trees)."""
    report, _, _ = run
    assert report["poncho"] == report["loky"]
    assert min(report["poncho"]["cross_val_score"]) > 0.8
    assert report["poncho"]["best_params"] == {"C": 10, "gamma": 0.001}
    assert min(report["poncho"]["mean_test_score"]) > 0.6  # real fits


def test_tasks_ran_in_the_shipped_env_without_the_hosts_python(run: tuple[dict, str, Path]
                                                                ) -> None:
    report, _, worker_cache = run
    for task in report["where"]:
        assert task["prefix"].startswith(str(worker_cache)), task
        assert task["pyenv"] == [] and task["saw_checkout"] is False


def test_parallel_inside_a_task_runs_sequentially_there(run: tuple[dict, str, Path]) -> None:
    report, _, _ = run
    for task in report["where"]:
        assert task["nested_backend"] == "SequentialBackend"
        assert task["nested_pids"] == 1 and task["pid"] is True  # in the task's own process


def test_ponchopoolexecutor_map_and_submit(run: tuple[dict, str, Path]) -> None:
    report, _, _ = run
    assert report["futures_map"] == list(map(lambda x, y: x ** 3 + y, range(40), range(40)))
    assert report["futures_submit"] == 28
    pids = report["chunk_pids"]  # a chunk of 7 calls = one task = one fork of the server
    assert [len(set(pids[i:i + 7])) for i in (0, 7, 14)] == [1, 1, 1] and len(set(pids)) == 3
    assert report["max_workers"] == report["cpu_count"] == 2  # the embedded workers' cores
    assert report["initialized_map"] == [1000 + x for x in range(10)]  # initializer, initargs


def test_large_array_is_sent_once_per_worker(run: tuple[dict, str, Path]) -> None:
    """16 tasks take the same 4 MB array: the worker receives it once, cached, and every task
    links it into its sandbox; no task's pickled call carries it."""
    report, log, _ = run
    big = report["big"]
    assert [c[0] for c in report["checksums"]] == big["expected"]
    assert {tuple(c[1:]) for c in report["checksums"]} == {("memmap", False)}  # mmap_mode="r"
    puts = [(name, int(size)) for name, size in PUT.findall(log)]
    data_puts = [(n, s) for n, s in puts if "poncho-data-" in n]
    assert len(data_puts) == 1, data_puts
    assert big["nbytes"] <= data_puts[0][1] < big["nbytes"] + 4096  # the .npy: header + data
    users = [n for n in INFILE.findall(log) if n.startswith("poncho-data-")]
    assert len(users) == 16
    calls = [s for n, s in puts if n.endswith("fn.pkl")]
    assert len(calls) >= 16 and max(calls) < big["nbytes"]  # no task's call carries it
