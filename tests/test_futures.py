"""PonchoPoolExecutor against concurrent.futures.ProcessPoolExecutor, scenario by scenario.

The executor is built on the standard library's fork context here (``mp_context=``), so these
tests check the adapter's semantics (dispatch, cancel, map chunks and timeouts, shutdown) fast;
tests/test_futures_e2e.py runs it on Work Queue workers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from parsl_poncho.errors import PonchoError
from parsl_poncho.futures import PonchoPoolExecutor

FORK = multiprocessing.get_context("fork")


def _ours(**kw: Any) -> PonchoPoolExecutor:
    return PonchoPoolExecutor(mp_context=FORK, **kw)


def _stdlib(**kw: Any) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(mp_context=FORK, **kw)


BOTH = pytest.mark.parametrize("make", [_ours, _stdlib], ids=["poncho", "stdlib"])


def square(x: int) -> int:
    return x * x


def pid_of(_: Any) -> int:
    return os.getpid()


def slow_square(x: int, delay: float = 0.2) -> int:
    time.sleep(delay)
    return x * x


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def keyword_call(a: int, *, b: int = 0) -> tuple[int, int]:
    return a, b


def _compare(scenario: Callable[[Any], Any]) -> None:
    """``scenario(executor)`` gives the same outcome on both executors."""
    outcomes = []
    for make in (_ours, _stdlib):
        with make(max_workers=2) as ex:
            try:
                outcomes.append(("value", scenario(ex)))
            except Exception as exc:  # noqa: BLE001 - the outcome compared is the exception
                outcomes.append(("raised", type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]


def test_submit_map_and_errors_match_process_pool_executor() -> None:
    _compare(lambda ex: ex.submit(square, 7).result())
    _compare(lambda ex: ex.submit(keyword_call, 1, b=2).result())
    _compare(lambda ex: list(ex.map(square, range(23), chunksize=4)))
    _compare(lambda ex: list(ex.map(pow, range(10), range(5), chunksize=3)))  # shortest wins
    _compare(lambda ex: list(ex.map(square, [])))
    _compare(lambda ex: ex.submit(fail_on, 3).result())
    _compare(lambda ex: list(ex.map(fail_on, range(6), chunksize=2)))


@BOTH
def test_exception_of_a_call_is_raised_by_result(make: Callable[..., Any]) -> None:
    with make(max_workers=2) as ex:
        future = ex.submit(fail_on, 3)
        with pytest.raises(ValueError, match="bad item 3"):
            future.result()
        assert isinstance(future.exception(), ValueError)


@BOTH
def test_map_raises_at_the_failing_chunk_after_earlier_results(make: Callable[..., Any]
                                                               ) -> None:
    with make(max_workers=2) as ex:
        results = ex.map(fail_on, range(8), chunksize=2)
        assert [next(results) for _ in range(2)] == [0, 1]  # chunk (0, 1) is fine
        with pytest.raises(ValueError, match="bad item 3"):
            list(results)  # chunk (2, 3) raises as a whole, as in ProcessPoolExecutor


@pytest.mark.parametrize("context", [FORK, None], ids=["poncho", "stdlib"])
def test_map_chunks_run_in_one_process_each(context: Any) -> None:
    """A chunk of ``chunksize`` calls runs in one worker process, one after another."""
    make = _ours if context is FORK else (  # the stdlib refuses max_tasks_per_child with fork
        lambda **kw: concurrent.futures.ProcessPoolExecutor(
            mp_context=multiprocessing.get_context("spawn"), **kw))
    with make(max_workers=2, max_tasks_per_child=1) as ex:
        pids = list(ex.map(pid_of, range(12), chunksize=4))
    chunks = [pids[i:i + 4] for i in range(0, 12, 4)]
    assert all(len(set(c)) == 1 for c in chunks), chunks
    assert len(set(pids)) == 3  # one process per chunk: max_tasks_per_child=1 counts chunks


@BOTH
def test_map_timeout_raises_timeout_error(make: Callable[..., Any]) -> None:
    with make(max_workers=1) as ex:
        results = ex.map(slow_square, [1, 2, 3], [0.0, 1.5, 0.0], timeout=0.5)
        assert next(results) == 1
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="^$"):
            next(results)
        assert time.monotonic() - t0 < 1.2  # counted from the map call, not from next()


def test_map_timeout_is_concurrent_futures_timeout_error() -> None:
    with _ours(max_workers=1) as ex:
        with pytest.raises(concurrent.futures.TimeoutError, match="^$"):
            list(ex.map(slow_square, [1], [1.0], timeout=0.1))


@BOTH
def test_cancelling_a_pending_future_keeps_it_from_running(make: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    with make(max_workers=1) as ex:
        first = ex.submit(slow_square, 2, 0.5)
        second = ex.submit(slow_square, 3, 0.5)  # ProcessPoolExecutor queues one extra call
        third = ex.submit(touch, str(tmp_path / "third"))
        assert third.cancel() is True
        assert third.cancelled()
        assert first.result() == 4 and second.result() == 9
    assert not (tmp_path / "third").exists()
    with pytest.raises(concurrent.futures.CancelledError, match="^$"):
        third.result()


def test_cancelling_a_running_future_fails() -> None:
    with _ours(max_workers=1) as ex:
        running = ex.submit(slow_square, 2, 0.3)
        assert running.running()
        assert running.cancel() is False
        assert running.result() == 4


@BOTH
def test_shutdown_cancel_futures_cancels_what_has_not_started(make: Callable[..., Any],
                                                              tmp_path: Path) -> None:
    ex = make(max_workers=1)
    started = ex.submit(slow_square, 2, 0.5)
    queued = [ex.submit(touch, str(tmp_path / f"f{i}")) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert started.result() == 4
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= 4  # ProcessPoolExecutor may have started one more
    assert len(list(tmp_path.iterdir())) == len(queued) - len(cancelled)


@BOTH
def test_submit_after_shutdown_raises_runtime_error(make: Callable[..., Any]) -> None:
    ex = make(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 2)


def test_shutdown_error_is_a_poncho_error() -> None:
    ex = _ours(max_workers=1)
    ex.shutdown()
    with pytest.raises(PonchoError, match="after shutdown"):
        ex.map(square, [1])


@BOTH
def test_shutdown_without_wait_still_finishes_the_work(make: Callable[..., Any]) -> None:
    ex = make(max_workers=1)
    futures = [ex.submit(slow_square, i, 0.05) for i in range(5)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=10) for f in futures] == [0, 1, 4, 9, 16]


def test_shutdown_wait_joins_the_pool() -> None:
    ex = _ours(max_workers=2)
    futures = [ex.submit(slow_square, i, 0.1) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert ex._pool._state != multiprocessing.pool.RUN


@BOTH
def test_bad_arguments_raise_like_the_standard_library(make: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(max_workers=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        make(initializer=3)
    with make(max_workers=1) as ex, pytest.raises(ValueError, match="chunksize must be >= 1"):
        ex.map(square, [1], chunksize=0)


_INIT_VALUE: list[int] = []


def _init(value: int) -> None:
    _INIT_VALUE.append(value)


def _read_init(_: Any) -> list[int]:
    return list(_INIT_VALUE)


@BOTH
def test_initializer_runs_before_calls(make: Callable[..., Any]) -> None:
    with make(max_workers=1, initializer=_init, initargs=(42,)) as ex:
        assert ex.submit(_read_init, None).result() == [42]


def test_no_pool_until_the_first_submit() -> None:
    class Counting:
        pools = 0

        def Pool(self, *args: Any) -> Any:  # noqa: N802 - the multiprocessing API's name
            Counting.pools += 1
            return FORK.Pool(*args)

        def cpu_count(self) -> int:
            return 2

    ex = PonchoPoolExecutor(mp_context=Counting())
    assert Counting.pools == 0
    assert ex.submit(square, 3).result() == 9
    assert Counting.pools == 1
    ex.shutdown()


@BOTH
def test_max_workers_plus_one_are_running(make: Callable[..., Any]) -> None:
    """Ours marks exactly max_workers + 1 futures running (ProcessPoolExecutor's call queue
    size) and leaves the rest pending, so they can be cancelled; the standard library marks
    at least as many (its queue thread refills the call queue as workers take calls)."""
    with make(max_workers=2) as ex:
        futures = [ex.submit(slow_square, i, 0.6) for i in range(5)]
        time.sleep(0.2)  # the standard library's queue thread moves calls asynchronously
        running = [f.running() for f in futures]
        if make is _ours:
            assert running == [True, True, True, False, False]
        else:
            assert running[:3] == [True, True, True]
        assert [f.result() for f in futures] == [0, 1, 4, 9, 16]


def test_the_cluster_pool_takes_one_call_ahead_of_its_cores(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """With the default context, Work Queue schedules per core: the pool gets max_workers + 1
    places when max_workers covers the cores, exactly max_workers otherwise."""
    made: list[int] = []

    class Cluster:
        def Pool(self, processes: int, *args: Any) -> Any:  # noqa: N802
            made.append(processes)
            return FORK.Pool(1)

        def cpu_count(self) -> int:
            return 4

    import parsl_poncho.futures
    import parsl_poncho.multiprocessing

    assert parsl_poncho.futures.schedules_per_core(parsl_poncho.multiprocessing)
    assert parsl_poncho.futures.schedules_per_core(parsl_poncho.multiprocessing.get_context())
    assert not parsl_poncho.futures.schedules_per_core(FORK)
    monkeypatch.setattr(parsl_poncho.futures, "schedules_per_core", lambda context: True)
    for max_workers in (None, 4, 2):
        with PonchoPoolExecutor(max_workers, Cluster()) as ex:
            assert ex.submit(square, 2).result() == 4
    assert made == [5, 5, 2]
