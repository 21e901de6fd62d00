"""``PonchoPoolExecutor``: a ``concurrent.futures.Executor`` over a pool of cluster workers.

A thin adapter over :class:`parsl_poncho.multiprocessing.Pool`, with the semantics documented
for :class:`concurrent.futures.ProcessPoolExecutor` (same constructor, ``submit``, ``map`` with
``chunksize`` and ``timeout``, ``shutdown(wait, cancel_futures)``)::

    from parsl_poncho.futures import PonchoPoolExecutor

    with PonchoPoolExecutor() as ex:
        print(sum(ex.map(pow, range(1000), range(1000), chunksize=100)))

How it maps onto the pool: ``submit`` is one ``apply_async``; each ``map`` chunk of
``chunksize`` items is one ``starmap_async`` call of that many items, so one Work Queue task.
As ProcessPoolExecutor marks a future running when it enters its call queue (``max_workers``
+ 1 places), ``max_workers`` + 1 calls or chunks are handed to the pool at a time, marked
running; the others wait here, pending, and ``Future.cancel()`` on them succeeds (the pool
never sees them). With the cluster's pool and ``max_workers`` covering its cores, the extra one
waits in Work Queue, which starts it the moment a core frees.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from parsl_poncho.errors import PonchoError

__all__ = ["ExecutorShutdownError", "PonchoPoolExecutor"]

#: Calls started beyond ``max_workers`` (ProcessPoolExecutor's call queue holds as many).
EXTRA_QUEUED_CALLS = 1


class ExecutorShutdownError(PonchoError, RuntimeError):
    """Work was submitted to a PonchoPoolExecutor after ``shutdown()`` (RuntimeError, as in
    the standard library)."""


class ExecutorArgumentError(PonchoError, ValueError):
    """A PonchoPoolExecutor argument is out of range (ValueError, as in the standard library)."""


# One unit of work for the pool: (future, fn, list of argument tuples, is this a map chunk).
_Work = tuple[concurrent.futures.Future, Callable[..., Any], Any, bool]


class PonchoPoolExecutor(concurrent.futures.Executor):
    """An Executor running calls on PonchoExecutor workers, through one pool.

    :param max_workers: calls or chunks running at once (default: the cluster's cores,
        ``mp_context.cpu_count()``).
    :param mp_context: where the pool comes from: anything with ``Pool(processes, initializer,
        initargs, maxtasksperchild)`` and ``cpu_count()``; default ``parsl_poncho.multiprocessing``
        (the loaded Parsl config's PonchoExecutor, else local workers). The standard library's
        ``multiprocessing.get_context("fork")`` works too, which is how the tests compare.
    :param initializer: run once per node before calls (see the pool's rule), with ``initargs``.
    :param max_tasks_per_child: recycle the node's function server after that many calls.
    :raises ExecutorArgumentError: ``max_workers`` or ``max_tasks_per_child`` below 1.
    :raises TypeError: ``initializer`` is not callable.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ExecutorArgumentError(
                f"max_workers must be greater than 0, got {max_workers!r}: pass None for the "
                "cluster's cores")
        if max_tasks_per_child is not None and (
                not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1):
            raise ExecutorArgumentError(
                f"max_tasks_per_child must be an integer >= 1, got {max_tasks_per_child!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, got {initializer!r}")
        self._context = mp_context
        self._max_workers = max_workers
        self._pool_args = (initializer, tuple(initargs), max_tasks_per_child)
        self._pool: Any = None
        self._lock = threading.Lock()
        self._pending: deque[_Work] = deque()
        self._in_flight = 0
        self._shutdown = False
        self._idle = threading.Event()
        self._idle.set()

    # -- the standard API ----------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; a Future of its result.

        :raises ExecutorShutdownError: after ``shutdown()``.
        """
        return self._enqueue(fn, (args, kwargs), is_chunk=False)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over the zipped iterables, results in order; chunks of ``chunksize`` calls
        are one Work Queue task each.

        The iterables are consumed now; ``timeout`` counts from this call, and reading a result
        later than that raises ``TimeoutError``. An exception raised by a call is raised when
        its result is read; closing the iterator early cancels the chunks not yet started.

        :raises ExecutorArgumentError: ``chunksize`` below 1.
        """
        if chunksize < 1:
            raise ExecutorArgumentError(f"chunksize must be >= 1, got {chunksize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        futures = []
        while True:
            chunk = list(itertools.islice(calls, chunksize))
            if not chunk:
                break
            futures.append(self._enqueue(fn, chunk, is_chunk=True))
        return _chunk_results(futures, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``cancel_futures``, cancel the calls not yet started;
        with ``wait``, return once every started call has finished and the pool is joined."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            pool = self._pool
            close_now = pool is not None and self._in_flight == 0 and not self._pending
        if close_now:
            pool.close()
        if wait:
            self._idle.wait()
            if pool is not None:
                pool.close()
                pool.join()

    # -- dispatch ------------------------------------------------------------------------------
    def _enqueue(self, fn: Callable[..., Any], payload: Any, is_chunk: bool
                 ) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise ExecutorShutdownError("cannot schedule new futures after shutdown")
            self._start_pool()
            self._pending.append((future, fn, payload, is_chunk))
            self._idle.clear()
            ready = self._take_ready()
        self._dispatch(ready)
        return future

    def _start_pool(self) -> None:
        """Create the pool on first use (so constructing an executor starts nothing)."""
        if self._pool is not None:
            return
        context = self._context
        if context is None:
            import parsl_poncho.multiprocessing as context
        cores = max(1, int(context.cpu_count()))
        if self._max_workers is None:
            self._max_workers = cores
        processes = self._max_workers
        if schedules_per_core(context) and processes >= cores:
            # Work Queue runs one task per core: the queued call waits there, not here, and
            # starts as soon as a core frees
            processes += EXTRA_QUEUED_CALLS
        initializer, initargs, max_tasks = self._pool_args
        self._pool = context.Pool(processes, initializer, initargs, max_tasks)

    def _take_ready(self) -> list[_Work]:
        """Under the lock: the pending work that may start now, marked running."""
        ready = []
        while self._pending and self._in_flight < (self._max_workers or 1) + EXTRA_QUEUED_CALLS:
            work = self._pending.popleft()
            if work[0].set_running_or_notify_cancel():
                self._in_flight += 1
                ready.append(work)
        if not self._pending and self._in_flight == 0:
            self._idle.set()
        return ready

    def _dispatch(self, ready: list[_Work]) -> None:
        for future, fn, payload, is_chunk in ready:
            done = _Completion(self, future)
            try:
                if is_chunk:
                    self._pool.starmap_async(fn, payload, len(payload), done.result, done.error)
                else:
                    args, kwargs = payload
                    self._pool.apply_async(fn, args, kwargs, done.result, done.error)
            except BaseException as exc:  # noqa: BLE001 - the future carries the failure
                done.error(exc)

    def _finished(self) -> None:
        """A call or chunk ended (result thread): start the next, close the pool when drained."""
        with self._lock:
            self._in_flight -= 1
            ready = self._take_ready()
            close = self._shutdown and self._in_flight == 0 and not self._pending
            pool = self._pool
        self._dispatch(ready)
        if close:
            pool.close()  # never join here: this may be the pool's own result thread


def schedules_per_core(context: Any) -> bool:
    """Whether pools of ``context`` run one task per core whatever their size (the cluster's,
    through Work Queue), so a place beyond the cores only queues."""
    name = getattr(context, "__name__", None) or type(context).__module__
    return name == "parsl_poncho.multiprocessing" or name.startswith(
        "parsl_poncho.multiprocessing.")


class _Completion:
    """The pool's callback and error_callback for one future."""

    __slots__ = ("executor", "future")

    def __init__(self, executor: PonchoPoolExecutor, future: concurrent.futures.Future) -> None:
        self.executor = executor
        self.future = future

    def result(self, value: Any) -> None:
        self.future.set_result(value)
        self.executor._finished()

    def error(self, exc: BaseException) -> None:
        self.future.set_exception(exc)
        self.executor._finished()


def _chunk_results(futures: list[concurrent.futures.Future], deadline: float | None
                   ) -> Iterator[Any]:
    """Each chunk's results in order; the chunks left unread are cancelled on exit."""
    remaining = deque(futures)
    try:
        while remaining:
            future = remaining[0]
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values = future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise
            remaining.popleft()
            yield from values
    finally:
        for future in remaining:
            future.cancel()
