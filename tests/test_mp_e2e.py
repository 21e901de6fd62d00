"""parsl_poncho.multiprocessing end to end, as a user runs it, on workers that cannot see this
host's Python or the checkout (tests/e2e/mp_pool/hidden_worker.sh): a Pool with an initializer
building a table used by hundreds of apply_async calls, imap, imap_unordered, starmap and map
with chunksize, a raising function with error_callback (script.py); and a node killed in the
middle of a map (fault.py). Programs with Processes run both under the standard library and
under ours (tests/e2e/mp_process); a daemon Process no worker took leaves no task, manager
process or open port behind when the driver exits, and a driver killed with its process group
leaves no local worker (queued_at_exit.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "mp_pool"
HIDDEN_WORKER = SCENARIO / "hidden_worker.sh"
CHECKOUT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # above the scripts' own timeouts, so their output is kept
    pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python"),
]


def run_script(name: str, tmp_path: Path, request: pytest.FixtureRequest, **extra: str) -> dict:
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    scratch = tmp_path / "scratch"
    (tmp_path / "runinfo").mkdir()
    scratch.mkdir()
    cache = request.config.cache.mkdir("parsl-poncho-mp-envs")  # shared with the other mp tests
    env = {**os.environ, "RUN_DIR": str(tmp_path / "runinfo"), "PONCHO_CACHE": str(cache),
           "WORKER": str(HIDDEN_WORKER), "CHECKOUT": str(CHECKOUT), "SCRATCH": str(scratch),
           "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / "wcache"), **extra}
    proc = subprocess.run([sys.executable, str(SCENARIO / name)], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_pool_script_runs_unchanged_on_hidden_workers(tmp_path, request):
    init_log = tmp_path / "init.log"
    report = run_script("script.py", tmp_path, request, INIT_LOG=str(init_log), N="300")

    table = [i * i % 97 for i in range(1000)]
    assert report["processes"] == 2  # the workers' cores, asked of the Work Queue manager
    assert report["table"] == table[:300]
    assert len(init_log.read_text().splitlines()) == 1  # once per node, for 300+ calls
    for seen in report["where"]:
        assert seen["prefix"].startswith(str(tmp_path / "wcache")), seen
        assert seen["saw_checkout"] is False and seen["pyenv"] == [], seen
    assert report["imap"] == table[:50]
    assert report["imap_unordered"] == sorted(table[:50])
    assert report["starmap"] == [b ** 3 for b in range(30)]
    assert report["map"] == table[:200]
    assert len(report["error"]) == 1, report["error"]
    assert report["error"][0] in ("ArithmeticError: 6 is unlucky",
                                  "ArithmeticError: 13 is unlucky")
    assert report["error_type"] == "ArithmeticError" and report["remote_traceback"]


def test_a_node_killed_in_the_middle_of_a_map_loses_no_item_and_runs_none_twice(tmp_path,
                                                                              request):
    side = tmp_path / "side"
    side.mkdir()
    report = run_script("fault.py", tmp_path, request, SIDE=str(side))

    assert report.get("killed", 0) >= 3, report  # a worker, its clients, a server at least
    assert report["started_on_doomed"], report
    assert report["results"] == [i * 10 for i in range(12)]
    assert report["done"] == {str(i): 1 for i in range(12)}, report["done"]


def test_shared_state_from_pool_tasks_on_hidden_workers_and_nothing_left_after(tmp_path,
                                                                              request):
    report = run_script("shared.py", tmp_path, request)

    assert report["out"] == list(range(8))
    assert report["results"] == {"total": 28, **{str(i): i * 10 for i in range(8)}}
    assert sorted(c["item"] for c in report["calls"]) == [f"job-{i}" for i in range(8)]
    for call in report["calls"]:  # redis came with the environment, not from this host
        assert call["redis"].startswith(call["prefix"]), call
        assert call["prefix"].startswith(str(tmp_path / "wcache")), call
        assert call["saw_checkout"] is False and call["pyenv"] == [], call
    # after the driver exited: no redis-server, so no key either
    assert not Path(f"/proc/{report['server_pid']}").exists()
    host, port = report["url"].rsplit("@", 1)[1].split("/")[0].rsplit(":", 1)
    refused = subprocess.run(["redis-cli", "-h", host, "-p", port, "PING"],
                             capture_output=True, text=True)
    assert "refused" in refused.stdout + refused.stderr


PROCESS_SCENARIO = Path(__file__).parent / "e2e" / "mp_process"


def ours(program: Path, dest: Path) -> Path:
    """``program`` with its ``import multiprocessing as mp`` line, and only that, changed."""
    lines = program.read_text().splitlines(keepends=True)
    changed = [line.replace("import multiprocessing as mp", "import parsl_poncho.multiprocessing"
                            " as mp") for line in lines]
    assert sum(a != b for a, b in zip(lines, changed)) == 1
    dest.write_text("".join(changed))
    return dest


def run_both(program: Path, tmp_path: Path, request: pytest.FixtureRequest, **extra: str
             ) -> tuple[dict, dict]:
    """The program under the standard library, then under ours on hidden-Python workers."""
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    cache = request.config.cache.mkdir("parsl-poncho-mp-envs")
    env = {**os.environ, "PONCHO_CACHE": str(cache), "WORKER": str(HIDDEN_WORKER),
           "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / "wcache"), **extra}
    reports = []
    for command in ([sys.executable, str(program)],
                    [sys.executable, str(PROCESS_SCENARIO / "run_embedded.py"),
                     str(ours(program, tmp_path / program.name))]):
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=800)
        assert proc.returncode == 0, proc.stderr[-5000:]
        reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return reports[0], reports[1]


def test_a_subprocvecenv_program_steps_cartpole_in_processes_on_hidden_workers(tmp_path,
                                                                             request):
    stdlib, poncho = run_both(PROCESS_SCENARIO / "vecenv.py", tmp_path, request, STEPS="300")

    for key in ("totals", "episodes", "last_obs", "exitcodes"):
        assert poncho[key] == stdlib[key], key
    assert poncho["exitcodes"] == [0, 0, 0, 0]
    assert sum(poncho["episodes"]) >= 4  # random actions: many short episodes
    for seen in poncho["where"]:
        assert seen["prefix"].startswith(str(tmp_path / "wcache")), seen
        assert seen["pyenv"] == [], seen
    assert len({seen["pid"] for seen in poncho["where"]}) == 4


def test_a_poet_like_program_with_manager_dicts_and_a_noise_table_on_hidden_workers(tmp_path,
                                                                                   request):
    stdlib, poncho = run_both(PROCESS_SCENARIO / "poet.py", tmp_path, request, ITERS="3",
                              POP="200")

    assert poncho["history"] == stdlib["history"]
    assert poncho["final"] == stdlib["final"]
    assert len(poncho["history"]) == 6
    assert poncho["history"][-2] > poncho["history"][0]  # the ES steps improve "flat"


def test_at_exit_daemon_processes_are_terminated_and_the_others_joined(tmp_path, request):
    started = time.monotonic()
    run_both(PROCESS_SCENARIO / "at_exit.py", tmp_path, request,
             MARK=str(tmp_path / "mark"), PIDS=str(tmp_path / "pids"))
    assert time.monotonic() - started < 300  # the daemon's 10-minute nap was cut short
    for module in ("multiprocessing", "parsl_poncho.multiprocessing"):
        assert (tmp_path / f"mark-{module}").read_text() == "joined", module
        pids = (tmp_path / f"pids-{module}").read_text().split()
        assert len(pids) == 2
        for pid in pids:  # none left running (a zombie is not running)
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def start_queued_at_exit(tmp_path: Path, request: pytest.FixtureRequest, worker: Path
                         ) -> tuple[subprocess.Popen, dict]:
    """queued_at_exit.py's driver with ``worker`` as its local worker, and its report."""
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    cache = request.config.cache.mkdir("parsl-poncho-mp-envs")
    (tmp_path / "tmp").mkdir()  # the run dir a killed driver cannot remove goes there
    env = {**os.environ, "PONCHO_CACHE": str(cache), "MARK": str(tmp_path / "mark"),
           "GO": str(tmp_path / "go"), "WORKER": str(worker), "TMPDIR": str(tmp_path / "tmp"),
           "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / "wcache")}
    stderr = tmp_path / "driver.stderr"  # a file: a pipe nobody reads could fill and block it
    with open(stderr, "w") as err:
        driver = subprocess.Popen(
            [sys.executable, str(PROCESS_SCENARIO / "run_embedded.py"),
             str(PROCESS_SCENARIO / "queued_at_exit.py")],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            start_new_session=True)  # its own process group, which a test may kill
    try:
        ready, _, _ = select.select([driver.stdout], [], [], 300)
        line = driver.stdout.readline() if ready else ""
        assert line.strip(), f"no report from the driver:\n{stderr.read_text()[-5000:]}"
        return driver, json.loads(line)
    except BaseException:
        stop_driver(driver, {})
        raise


def stop_driver(driver: subprocess.Popen, report: dict) -> None:
    """After a failure: kill the driver, if it still runs, and what it started."""
    if driver.poll() is None:
        driver.kill()
        driver.wait()
    for pid in report.get("children", []):
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_process_no_worker_took_leaves_no_task_queued_after_the_driver_exits(tmp_path,
                                                                            request):
    driver, report = start_queued_at_exit(tmp_path, request, PROCESS_SCENARIO / "no_worker.sh")
    try:
        port = str(report["port"])
        deadline = time.monotonic() + 120
        while True:  # the Process's task waits in Work Queue: no worker took it
            status = subprocess.run(["work_queue_status", "-T", "127.0.0.1", port],
                                    capture_output=True, text=True, timeout=60)
            if "WAITING" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "WAITING" in status.stdout, status.stdout + status.stderr
        (tmp_path / "go").touch()
        started = time.monotonic()
        assert driver.wait(timeout=120) == 0, (tmp_path / "driver.stderr").read_text()[-5000:]
    finally:
        stop_driver(driver, report)
    assert time.monotonic() - started < 20, time.monotonic() - started  # promptly

    assert len(report["children"]) >= 2  # the manager process and the (stand-in) worker
    assert not [pid for pid in report["children"] if running(pid)]
    with pytest.raises(ConnectionRefusedError, match="refused"):  # the manager's port closed
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
    late = subprocess.run([str(HIDDEN_WORKER), "-t", "5", "127.0.0.1", port],
                          capture_output=True, text=True, timeout=120)
    assert "creating workspace" in late.stderr + late.stdout  # it did start
    assert not (tmp_path / "mark").exists()  # and ran nothing


def test_a_killed_driver_group_leaves_no_local_worker_behind(tmp_path, request):
    driver, report = start_queued_at_exit(tmp_path, request, HIDDEN_WORKER)
    try:
        assert len(report["children"]) >= 2  # the manager process and the local worker
        # SIGKILL to the driver's process group (as a batch system's kill may do): neither
        # the driver's exit handlers nor its manager process's shutdown of the workers runs
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while [pid for pid in report["children"] if running(pid)]:
            assert time.monotonic() < deadline, [
                Path(f"/proc/{pid}/cmdline").read_text() for pid in report["children"]
                if running(pid)]
            time.sleep(0.2)
    finally:
        stop_driver(driver, report)
