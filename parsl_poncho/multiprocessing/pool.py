"""``Pool``: the standard library's process pool, with each chunk run as one Work Queue task.

Mirrors CPython's ``Lib/multiprocessing/pool.py`` (same method signatures, defaults, result
classes and error messages). What differs is where chunks run: one chunk = one Work Queue task,
run in one fork of the pool's function server on a node (see ``link.py``), its calls one after
another. ``processes`` bounds the chunks in flight; a feeder thread sends a chunk when a slot is
free (so ``imap`` also reads its input lazily), and a result thread sets results and calls the
callbacks, in the order chunks finish.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import types
from concurrent.futures import Future
from multiprocessing import TimeoutError
from typing import Any, Callable, Iterable, Iterator, Sequence

from parsl_poncho.multiprocessing.link import (
    APPLY,
    MAP,
    STAR,
    PoolLink,
    current_executor,
    default_processes,
)
from parsl_poncho.workqueue import FileToWq

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator"]

logger = logging.getLogger(__name__)

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
_job_counter = itertools.count()


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[tuple]:
    it = iter(iterable)
    while True:
        chunk = tuple(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


class _Work:
    """One job's chunks, as the feeder thread takes them."""

    def __init__(self, job: Any, kind: int, func: Callable, chunks: Iterable[Sequence[Any]],
                 cached_inputs: Sequence[FileToWq] = (), set_length: bool = False) -> None:
        self.job, self.kind, self.func, self.chunks = job, kind, func, chunks
        self.cached_inputs, self.set_length = tuple(cached_inputs), set_length


class Pool:
    """A pool of processes on the PonchoExecutor's workers, as ``multiprocessing.Pool``.

    :param processes: chunks in flight at once (default: the cores the workers offer).
    :param initializer: run as ``initializer(*initargs)`` once per node, in the pool's function
        server before it forks any call: what it sets in module globals every call sees.
    :param maxtasksperchild: a node's pool server is replaced (and the initializer runs again)
        after this many chunks.
    :param context: accepted for compatibility; there is one context.
    :raises ValueError: ``processes`` < 1 or ``maxtasksperchild`` not a positive int.
    :raises TypeError: ``initializer`` is not callable, or cannot be pickled.

    >>> import parsl_poncho.multiprocessing as mp
    >>> with mp.Pool(4) as pool:  # doctest: +SKIP
    ...     pool.map(abs, [-1, -2])
    [1, 2]
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Sequence[Any] = (), maxtasksperchild: int | None = None,
                 context: Any = None) -> None:
        self._state = RUN  # first: __del__ and __repr__ read it
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
                not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        executor = current_executor()
        self._link = PoolLink(executor, initializer, initargs, maxtasksperchild)
        self._processes = processes or default_processes(executor)
        self._cache: dict[int, Any] = {}
        self._slots = threading.Semaphore(self._processes)
        self._inflight: set[Future] = set()
        self._idle = threading.Condition()
        self._taskqueue: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, daemon=True,
                                        name=f"poncho-pool-{self._link.key}-feeder")
        self._collector = threading.Thread(target=self._collect, daemon=True,
                                           name=f"poncho-pool-{self._link.key}-results")
        self._feeder.start()
        self._collector.start()

    def __repr__(self) -> str:
        return (f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
                f"pool_size={getattr(self, '_processes', '?')}>")

    def __reduce__(self) -> Any:
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    # -- the threads -------------------------------------------------------------------------
    def _feed(self) -> None:
        """Send chunks while slots are free, in the order the jobs were given."""
        while True:
            work = self._taskqueue.get()
            if work is None or self._state == TERMINATE:
                return
            sent = 0
            try:
                for index, chunk in enumerate(work.chunks):
                    if not self._take_slot():
                        return
                    self._send(work, index, chunk)
                    sent = index + 1
            except Exception as exc:  # noqa: BLE001 - the caller's iterable raised
                self._report(work.job, sent, exc)  # as the stdlib: at the next index
                sent += 1
            if work.set_length:
                work.job._set_length(sent)

    def _take_slot(self) -> bool:
        while not self._slots.acquire(timeout=0.2):
            if self._state == TERMINATE:
                return False
        if self._state == TERMINATE:
            self._slots.release()
            return False
        return True

    def _send(self, work: _Work, index: int, chunk: Sequence[Any]) -> None:
        try:
            future = self._link.submit_chunk(work.kind, work.func, chunk,
                                             cached_inputs=work.cached_inputs)
        except Exception as exc:  # noqa: BLE001 - pickling, analysis: the job's error
            self._slots.release()
            self._report(work.job, index, exc)
            return
        with self._idle:
            self._inflight.add(future)
        future.add_done_callback(lambda f: self._results.put((work.job, index, f)))

    def _report(self, job: Any, index: int, exc: BaseException) -> None:
        failed: Future = Future()
        failed.set_exception(exc)
        with self._idle:
            self._inflight.add(failed)
        self._slots.acquire()  # the result thread gives it back, as for a sent chunk
        self._results.put((job, index, failed))

    def _collect(self) -> None:
        """The result thread: set results in the order chunks finish, run callbacks."""
        while True:
            item = self._results.get()
            if item is None:
                return
            job, index, future = item
            self._slots.release()
            if not future.cancelled():
                exc = future.exception()
                outcome = (True, future.result()) if exc is None else (False, exc)
                try:
                    job._set(index, outcome)
                except Exception:  # noqa: BLE001 - a raising callback: CPython's pool hangs
                    logger.exception("a callback of %r raised; the pool goes on", job)
            with self._idle:
                self._inflight.discard(future)
                self._idle.notify_all()

    # -- the standard library's API ----------------------------------------------------------
    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def apply(self, func: Callable, args: Sequence[Any] = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` on a worker; waits for its value."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Sequence[Any] = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None,
                    *, cached_inputs: Sequence[FileToWq] = ()) -> ApplyResult:
        """``func(*args, **kwds)`` as one chunk; returns its :class:`ApplyResult` at once.

        :param cached_inputs: (ours, not the stdlib's) extra input files of this task that
            workers cache, as ``FileToWq`` with content-derived remote names; the call finds
            them in its working directory.
        """
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        items = [(tuple(args), dict(kwds or {}))]
        self._taskqueue.put(_Work(result, APPLY, func, [items], cached_inputs))
        return result

    def map(self, func: Callable, iterable: Iterable[Any], chunksize: int | None = None
            ) -> list:
        """``[func(x) for x in iterable]`` in chunks; waits for every value."""
        return self._map_async(func, iterable, MAP, chunksize).get()

    def starmap(self, func: Callable, iterable: Iterable[Sequence[Any]],
                chunksize: int | None = None) -> list:
        """``[func(*x) for x in iterable]`` in chunks; waits for every value."""
        return self._map_async(func, iterable, STAR, chunksize).get()

    def map_async(self, func: Callable, iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None
                  ) -> MapResult:
        """:meth:`map` returning a :class:`MapResult` at once."""
        return self._map_async(func, iterable, MAP, chunksize, callback, error_callback)

    def starmap_async(self, func: Callable, iterable: Iterable[Sequence[Any]],
                      chunksize: int | None = None, callback: Callable | None = None,
                      error_callback: Callable | None = None) -> MapResult:
        """:meth:`starmap` returning a :class:`MapResult` at once."""
        return self._map_async(func, iterable, STAR, chunksize, callback, error_callback)

    def _map_async(self, func: Callable, iterable: Iterable[Any], kind: int,
                   chunksize: int | None = None, callback: Callable | None = None,
                   error_callback: Callable | None = None) -> MapResult:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items: Any = iterable
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)
            if extra:
                chunksize += 1
        if len(items) == 0:
            chunksize = 0
        result = MapResult(self, chunksize, len(items), callback, error_callback)
        if chunksize > 0:
            self._taskqueue.put(_Work(result, kind, func, _chunks(items, chunksize)))
        return result

    def imap(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1) -> Iterator:
        """Lazily, in order: ``func(x)`` for each ``x``; the input is read as slots free up."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1
                       ) -> Iterator:
        """As :meth:`imap`, in the order the chunks finish."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, cls: type, func: Callable, iterable: Iterable[Any], chunksize: int
              ) -> Iterator:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result = cls(self, unwrap=chunksize == 1)
        self._taskqueue.put(_Work(result, MAP, func, _chunks(iterable, chunksize),
                                  set_length=True))
        if chunksize == 1:
            return result
        return (item for chunk in result for item in chunk)

    def close(self) -> None:
        """Take no more work; what was given still runs."""
        if self._state == RUN:
            self._state = CLOSE
            self._taskqueue.put(None)

    def terminate(self) -> None:
        """Stop now: chunks not sent are dropped; results not set stay unset (as the stdlib).

        Chunks already running on workers finish there; their results are discarded.
        """
        if self._state == TERMINATE:
            return
        self._state = TERMINATE
        self._taskqueue.put(None)
        with self._idle:
            inflight = list(self._inflight)
        for future in inflight:
            future.cancel()
        self._feeder.join()
        self._stop_collector()
        self._link.close()

    def join(self) -> None:
        """Wait for the work given before :meth:`close` (or for :meth:`terminate`).

        :raises ValueError: the pool still runs (call close() or terminate() first).
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._feeder.join()
        if self._state == CLOSE:
            with self._idle:
                self._idle.wait_for(lambda: not self._inflight)
        self._stop_collector()
        if self._state == CLOSE:
            self._link.close()

    def _stop_collector(self) -> None:
        if self._collector.is_alive():
            self._results.put(None)
            if threading.current_thread() is not self._collector:
                self._collector.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()


class ApplyResult:
    """The result of :meth:`Pool.apply_async` (``AsyncResult``)."""

    def __init__(self, pool: Pool, callback: Callable | None,
                 error_callback: Callable | None) -> None:
        self._pool: Pool | None = pool
        self._event = threading.Event()
        self._job = next(_job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._cache[self._job] = self

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call returned without raising.

        :raises ValueError: the result is not ready.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The value, or the exception re-raised (its type, with the remote traceback).

        :raises multiprocessing.TimeoutError: not ready after ``timeout`` seconds.
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        self._success, value = obj
        self._value = value[0] if self._success else value
        try:
            if self._callback and self._success:
                self._callback(self._value)
            if self._error_callback and not self._success:
                self._error_callback(self._value)
        finally:
            self._event.set()
            del self._cache[self._job]
            self._pool = None

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of :meth:`Pool.map_async`: ready when every chunk has finished."""

    def __init__(self, pool: Pool, chunksize: int, length: int, callback: Callable | None,
                 error_callback: Callable | None) -> None:
        super().__init__(pool, callback, error_callback)
        self._success = True
        self._value: Any = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._event.set()
            del self._cache[self._job]
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, i: int, success_result: tuple[bool, Any]) -> None:
        self._number_left -= 1
        success, result = success_result
        if success and self._success:
            self._value[i * self._chunksize:(i + 1) * self._chunksize] = result
            if self._number_left == 0:
                self._finish(self._callback)
        else:
            if not success and self._success:
                self._success = False  # the first exception is the job's
                self._value = result
            if self._number_left == 0:  # ready once every chunk is done, as the stdlib
                self._finish(self._error_callback)

    def _finish(self, callback: Callable | None) -> None:
        try:
            if callback:
                callback(self._value)
        finally:
            del self._cache[self._job]
            self._event.set()
            self._pool = None


class IMapIterator:
    """The iterator of :meth:`Pool.imap`: values in order, as chunks finish."""

    def __init__(self, pool: Pool, unwrap: bool = True) -> None:
        self._pool: Pool | None = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(_job_counter)
        self._cache = pool._cache
        self._items: collections.deque = collections.deque()
        self._index = 0
        self._length: int | None = None
        self._unsorted: dict[int, Any] = {}
        self._unwrap = unwrap  # chunks of one: the item's value, not a list of one
        self._cache[self._job] = self

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next value (or its exception).

        :raises multiprocessing.TimeoutError: none arrived within ``timeout`` seconds.
        """
        with self._cond:
            try:
                item = self._items.popleft()
            except IndexError:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                self._cond.wait(timeout)
                try:
                    item = self._items.popleft()
                except IndexError:
                    if self._index == self._length:
                        self._pool = None
                        raise StopIteration from None
                    raise TimeoutError from None
        success, value = item
        if success:
            return value
        raise value

    __next__ = next

    def _value_of(self, obj: tuple[bool, Any]) -> tuple[bool, Any]:
        success, value = obj
        return (True, value[0]) if success and self._unwrap else obj

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        with self._cond:
            if self._index == i:
                self._items.append(self._value_of(obj))
                self._index += 1
                while self._index in self._unsorted:
                    self._items.append(self._value_of(self._unsorted.pop(self._index)))
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = obj
            if self._index == self._length:
                self._done()

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify()
                self._done()

    def _done(self) -> None:
        self._cache.pop(self._job, None)
        self._pool = None


class IMapUnorderedIterator(IMapIterator):
    """The iterator of :meth:`Pool.imap_unordered`: values in the order chunks finish."""

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        with self._cond:
            self._items.append(self._value_of(obj))
            self._index += 1
            self._cond.notify()
            if self._index == self._length:
                self._done()
