"""parsl_poncho/manager.py: the Work Queue manager process spawned, restarted on the same port
with the unfinished tasks sent again, and a clear error once no restart is left (real manager
processes and a real worker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from tools import require_tool

from parsl_poncho.errors import ExecutorError
from parsl_poncho.manager import ManagerProcess
from parsl_poncho.workqueue import FileToWq, ManagerSettings, TaskToWq


def _manager(tmp_path: Path, max_restarts: int) -> ManagerProcess:
    settings = ManagerSettings(port=0, log_dir=str(tmp_path), max_idle=0.05)
    return ManagerProcess(settings, "test", tmp_path, max_restarts)


def _task(tmp_path: Path, task_id: str, command: str) -> TaskToWq:
    out = tmp_path / f"out{task_id}"
    return TaskToWq(id=task_id, command=command, category="c", inputs=(),
                    outputs=(FileToWq(str(out), "out"),), result_file=str(out),
                    resources={"cores": 1})


def _kill(manager: ManagerProcess) -> None:
    dead = manager.process
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(timeout=30)
    assert not dead.is_alive()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_manager_restarts_on_its_port_and_its_unfinished_task_runs(tmp_path,
                                                                            monkeypatch):
    require_tool("work_queue_worker")
    manager = _manager(tmp_path, max_restarts=1)
    port = manager.start()
    # a manager asking for any port would now get another one than the port it had
    monkeypatch.setenv("TCP_LOW_PORT", str(port + 1))
    manager.send(_task(tmp_path, "1", "echo one > out"))
    _kill(manager)  # before any worker could run it: only a resend can finish it
    worker = subprocess.Popen(["work_queue_worker", "--cores", "1", "-t", "60", "localhost",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        msg = next(manager.results())  # the restart happens in here
        manager.forget(msg.id)
    finally:
        manager.stop()
        manager.close()
        worker.kill()
        worker.wait(timeout=60)
    assert manager.restarts == 1 and manager.port == port
    assert (msg.id, msg.result) == ("1", "SUCCESS")
    assert (tmp_path / "out1").read_text() == "one\n"
    assert manager.sent == {} and not manager.process.is_alive()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_manager_dead_with_no_restart_left_is_a_clear_error(tmp_path):
    require_tool("work_queue_worker")
    manager = _manager(tmp_path, max_restarts=0)
    manager.start()
    _kill(manager)
    try:
        with pytest.raises(ExecutorError, match=r"died \(exit code -9\) after 0 restarts "
                                                r"\(manager_restarts=0\); see "):
            next(manager.results())
    finally:
        manager.stop()
        manager.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_results_end_after_stop_and_the_port_closes(tmp_path):
    require_tool("work_queue_worker")
    manager = _manager(tmp_path, max_restarts=3)
    port = manager.start()
    drained = threading.Event()

    def read_all() -> None:
        for _ in manager.results():
            pass
        drained.set()

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    manager.stop()
    reader.join(timeout=10)
    manager.close()
    assert drained.is_set() and manager.restarts == 0
    assert manager.process.exitcode == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_restart_that_fails_in_any_way_is_a_clear_error(tmp_path, monkeypatch):
    require_tool("work_queue_worker")
    manager = _manager(tmp_path, max_restarts=1)
    manager.start()
    _kill(manager)

    def start_fails() -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(manager, "start", start_fails)
    try:  # an error the executor would not catch would leave every future waiting
        with pytest.raises(ExecutorError, match=r"died and could not be restarted: "
                                                r"OSError\(24, 'Too many open files'\)"):
            next(manager.results())
    finally:
        manager.stop()
        manager.close()
