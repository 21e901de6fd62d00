"""Prompt dispatch around Work Queue's wait (parsl_poncho/wq_wait.py): a task submitted while the
queue is idle but busy (tasks running, none ending) is dispatched at once, not after the
1 s poll Work Queue 9.9 makes after a round without events."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tools import require_tool

from parsl_poncho import wq_wait
from parsl_poncho.workqueue import FileToWq, ManagerSettings, TaskToWq, load_work_queue
from parsl_poncho.wq_wait import Sleeper, enable_prompt_wait


def _task(wq, command: str):
    t = wq.Task(command)
    t.specify_cores(1)
    return t


@pytest.mark.slow
def test_bare_work_queue_dispatches_a_new_task_at_once_while_another_runs():
    """The reproduction of the defect (sleep 4 running, two idle wait(0), submit): with the
    prompt wait the next wait(0) returns at once and the new task ends within 0.5 s."""
    require_tool("work_queue_worker")
    wq = load_work_queue()
    q = wq.WorkQueue(0)
    assert enable_prompt_wait(q)
    worker = subprocess.Popen(["work_queue_worker", "--cores", "2", "-t", "30", "localhost",
                               str(q.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        q.submit(_task(wq, "sleep 4"))
        deadline = time.monotonic() + 30
        while q.stats.tasks_running == 0 and time.monotonic() < deadline:
            q.wait(0)
            time.sleep(0.01)
        assert q.stats.tasks_running == 1
        idle = []
        for _ in range(2):
            start = time.monotonic()
            assert q.wait(0) is None
            idle.append(time.monotonic() - start)
        q.submit(_task(wq, "true"))
        start = time.monotonic()
        q.wait(0)
        first = time.monotonic() - start
        done = None
        while done is None and time.monotonic() - start < 3:
            t = q.wait(0)
            done = t if t is not None and t.command == "true" else None
            time.sleep(0.002)
        took = time.monotonic() - start
    finally:
        worker.kill()
        worker.wait()
    assert max(idle) < 0.2, idle  # without the prompt wait: 1.0 s each
    assert first < 0.2, first
    assert done is not None and done.return_status == 0
    assert took < 0.5, took


@pytest.mark.slow
def test_manager_process_dispatches_a_task_sent_while_idle_but_busy(tmp_path: Path):
    """Through the real manager process: a task sent after the loop has sat 2.5 s beside a
    running task starts on the worker less than 0.2 s after it was sent."""
    require_tool("work_queue_worker")
    from parsl.multiprocessing import SpawnContext, SpawnProcess

    from parsl_poncho import workqueue

    tasks, results, mailbox = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    stop = SpawnContext.Event()
    proc = SpawnProcess(target=workqueue.run_manager, kwargs=dict(
        settings=ManagerSettings(), task_queue=tasks, result_queue=results,
        port_mailbox=mailbox, should_stop=stop))
    proc.start()
    port = mailbox.get(timeout=60)
    worker = subprocess.Popen(["work_queue_worker", "--cores", "2", "-t", "60", "localhost",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        slow, quick = tmp_path / "slow", tmp_path / "quick"
        tasks.put([TaskToWq(id="slow", command="sleep 6; echo > out", category="c", inputs=(),
                            outputs=(FileToWq(str(slow), "out"),), result_file=str(slow),
                            resources={"cores": 1})])
        time.sleep(3)  # the slow task runs (the worker connected); nothing ends
        sent = time.time()
        tasks.put([TaskToWq(id="quick", command="date +%s.%N > out", category="c", inputs=(),
                            outputs=(FileToWq(str(quick), "out"),), result_file=str(quick),
                            resources={"cores": 1})])
        first = results.get(timeout=30)
        rest = results.get(timeout=30)  # the slow one: workers leave only when idle
    finally:
        stop.set()
        proc.join(timeout=30)
        worker.wait(timeout=30)
    assert [m.id for m in first] == ["quick"] and [m.id for m in rest] == ["slow"]
    started = float(quick.read_text())
    assert started - sent < 0.2, started - sent


def test_sockets_lists_this_process_sockets_and_not_its_pipes():
    read, write = os.pipe()
    a, b = socket.socketpair()
    try:
        found = set(wq_wait._sockets())
        assert {a.fileno(), b.fileno()} <= found and not {read, write} & found
    finally:
        for fd in (read, write):
            os.close(fd)
        a.close()
        b.close()


def test_sleeper_wakes_on_the_inbox_and_on_sockets_and_times_out_otherwise(monkeypatch):
    read, write = os.pipe()
    a, b = socket.socketpair()
    # only these: other tests of this process may leave sockets that are readable (closed)
    monkeypatch.setattr(wq_wait, "_sockets", lambda: [a.fileno()])
    try:
        sleeper = Sleeper(read)
        start = time.monotonic()
        sleeper.sleep(0.2)
        assert 0.15 < time.monotonic() - start < 1
        os.write(write, b"x")
        start = time.monotonic()
        sleeper.sleep(5)
        assert time.monotonic() - start < 0.5
        os.read(read, 1)
        b.send(b"y")  # a worker's message: any socket of the process wakes it
        start = time.monotonic()
        sleeper.sleep(5)
        assert time.monotonic() - start < 0.5
    finally:
        for fd in (read, write):
            os.close(fd)
        a.close()
        b.close()


def test_sleeper_rescans_after_a_socket_closes(monkeypatch):
    a, b = socket.socketpair()
    live = [a.fileno(), b.fileno()]
    monkeypatch.setattr(wq_wait, "_sockets", lambda: list(live))
    sleeper = Sleeper(None)
    sleeper.sleep(0.01)
    assert {a.fileno(), b.fileno()} <= sleeper._fds
    a.close()
    b.close()
    live.clear()
    sleeper.sleep(0.01)  # the closed sockets answer POLLNVAL: the next sleep rescans
    start = time.monotonic()
    sleeper.sleep(0.2)
    assert time.monotonic() - start > 0.15  # slept: no stale descriptor left to spin on
