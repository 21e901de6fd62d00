"""The manager's backlog (parsl_poncho/backlog.py): Work Queue gets at most about two tasks per
connected core, highest priority first, then in arrival order."""

from __future__ import annotations

from types import SimpleNamespace

from parsl_poncho.backlog import MIN_IN_FLIGHT, Backlog, holds_no_core
from parsl_poncho.workqueue import TaskToWq


def _task(name: str, **resources) -> TaskToWq:
    return TaskToWq(id=name, command="true", category="c", inputs=(), outputs=(),
                    result_file="r", resources=resources)


def _queue(cores: int) -> SimpleNamespace:
    return SimpleNamespace(stats=SimpleNamespace(total_cores=cores))


def test_take_fills_up_to_twice_the_cores_in_priority_then_arrival_order():
    backlog = Backlog()
    for i in range(100):
        backlog.add(_task(f"t{i}", priority=5 if i in (50, 70) else None))
    q = _queue(cores=40)
    got = [m.id for m in backlog.take(in_flight=30, q=q)]
    assert len(got) == 80 - 30
    assert got[:4] == ["t50", "t70", "t0", "t1"]
    assert len(backlog) == 50
    assert list(backlog.take(in_flight=80, q=q)) == []


def test_without_workers_work_queue_still_gets_the_minimum():
    backlog = Backlog()
    for i in range(MIN_IN_FLIGHT + 5):
        backlog.add(_task(str(i)))
    assert len(list(backlog.take(in_flight=0, q=_queue(cores=0)))) == MIN_IN_FLIGHT
    assert len(backlog) == 5


def test_a_failing_stats_call_keeps_the_last_cap():
    class Broken:
        @property
        def stats(self):
            raise RuntimeError("gone")

    backlog = Backlog()
    assert backlog.cap(Broken()) == MIN_IN_FLIGHT


def test_tasks_asking_for_no_cores_are_never_held():
    """multiprocessing Processes (cores 0) may wait on each other: holding one back past the
    cap could leave its siblings waiting for it forever."""
    backlog = Backlog()
    for i in range(MIN_IN_FLIGHT):
        backlog.add(_task(f"busy{i}", cores=1))
    for i in range(3):
        backlog.add(_task(f"process{i}", cores=0))
    got = [m.id for m in backlog.take(in_flight=MIN_IN_FLIGHT, q=_queue(cores=0))]
    assert got == ["process0", "process1", "process2"]
    assert len(backlog) == MIN_IN_FLIGHT
    assert holds_no_core(_task("p", cores=0)) and not holds_no_core(_task("t"))
