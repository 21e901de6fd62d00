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


# -- a script without an `if __name__ == "__main__":` guard ------------------------------------
NO_GUARD = '''
import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import PonchoExecutor

ex = PonchoExecutor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
                    cache_dir={cache!r})
parsl.load(Config(executors=[ex], run_dir={run_dir!r}, strategy="none"))
parsl.dfk().cleanup()
'''


def test_has_main_guard_reads_the_script(tmp_path):
    from parsl_poncho.manager import has_main_guard, start_failure_message

    guarded, bare = tmp_path / "guarded.py", tmp_path / "bare.py"
    guarded.write_text("import os\n\nif __name__ == '__main__':\n    print(1)\n")
    bare.write_text("import os\nprint(__name__ == '__main__')\n")
    assert has_main_guard(str(guarded)) and not has_main_guard(str(bare))
    assert has_main_guard(str(tmp_path / "missing.py"))  # unknown: the script is not blamed
    message = start_failure_message("ex", 9000, 1, tmp_path, main_file=str(bare))
    assert message.startswith(f"ex: the Work Queue manager process exited at once (exit code 1): "
                              f"your script {bare} has no `if __name__ == \"__main__\":` guard")
    other = start_failure_message("ex", 9000, 1, tmp_path, main_file=str(guarded))
    assert "exited with code 1; port 9000 in use?" in other
    assert "port 9000 in use?" in start_failure_message("ex", 9000, None, tmp_path,
                                                         main_file=str(bare))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_script_without_main_guard_is_told_so_at_once(tmp_path):
    import sys
    import time

    script = tmp_path / "workflow.py"
    script.write_text(NO_GUARD.format(cache=str(tmp_path / "cache"),
                                      run_dir=str(tmp_path / "runinfo")))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert proc.returncode != 0
    assert (f"your script {script} has no `if __name__ == \"__main__\":` guard"
            in proc.stderr), proc.stderr[-3000:]
    assert "Put the script's work (parsl.load and the app calls) under" in proc.stderr
    assert time.monotonic() - start < 40  # not the minute a silent manager is waited for
