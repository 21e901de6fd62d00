"""``Queue``, ``SimpleQueue`` and ``JoinableQueue`` in the store, as in CPython's
``Lib/multiprocessing/queues.py``.

Items are pickled into a Redis list (``RPUSH``/``BLPOP``: a blocked ``get`` sleeps in the
server). A bounded queue also keeps a list of free slots: ``put`` takes one (blocking, with the
timeout, else ``queue.Full``), ``get`` gives one back. ``JoinableQueue`` counts unfinished
tasks atomically (Lua) and wakes ``join`` waiters through lists of their own. There is no
feeder thread, so ``close``, ``join_thread`` and ``cancel_join_thread`` have nothing to flush.
Pickled by value (see ``store.py``).
"""

from __future__ import annotations

import pickle
import queue
import sys
import uuid
from typing import Any

import cloudpickle

from parsl_poncho.multiprocessing.store import Store
from parsl_poncho.multiprocessing.synchronize import _NOTIFY, _Shared, _wait_time

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

# KEYS: items, unfinished. ARGV: item. Push and count as one step.
_PUT_JOINABLE = """
redis.call('RPUSH', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""
# KEYS: unfinished, waiters. -1: called too often; else the count left (0 wakes the joiners).
_TASK_DONE = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 0 then return -1 end
n = redis.call('DECR', KEYS[1])
if n == 0 then
""" + _NOTIFY.replace("KEYS[1]", "KEYS[2]").replace("tonumber(ARGV[1])", "-1") + """
end
return n
"""
# KEYS: unfinished, waiters. ARGV: my list. 1: nothing unfinished; else registers me.
_JOIN = """
if tonumber(redis.call('GET', KEYS[1]) or '0') == 0 then return 1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 0
"""


class Queue(_Shared):
    """``multiprocessing.Queue(maxsize=0)``: ``put``/``get`` with ``block`` and ``timeout``
    (``queue.Full``/``queue.Empty``), ``qsize``, ``empty``, ``full``, ``put_nowait``,
    ``get_nowait``, ``close``."""

    _settings = ("_maxsize",)

    def __init__(self, maxsize: int = 0, *, store: Store | None = None) -> None:
        super().__init__(store)
        self._maxsize = max(0, int(maxsize))
        if self._maxsize:
            self._client().rpush(self._key("slots"), *[b"1"] * self._maxsize)
        self._closed = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._closed = False

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._check_closed()
        data = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if self._maxsize:
            wait = _wait_time(block, timeout)
            client = self._client()
            if wait is None:
                slot = client.lpop(self._key("slots"))
            else:
                slot = client.blpop([self._key("slots")], timeout=wait)
            if slot is None:
                raise queue.Full
        self._push(data)

    def _push(self, data: bytes) -> None:
        self._client().rpush(self._key("items"), data)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._check_closed()
        wait = _wait_time(block, timeout)
        client = self._client()
        if wait is None:
            data = client.lpop(self._key("items"))
        else:
            got = client.blpop([self._key("items")], timeout=wait)
            data = got[1] if got is not None else None
        if data is None:
            raise queue.Empty
        if self._maxsize:
            client.rpush(self._key("slots"), b"1")
        return pickle.loads(data)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        return int(self._client().llen(self._key("items")))

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    def close(self) -> None:
        """This handle can no longer put or get (the queue and its items stay)."""
        self._closed = True

    def join_thread(self) -> None:
        """Nothing to wait for: ``put`` has written the item when it returns."""
        if not self._closed:
            raise ValueError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel (no feeder thread)."""

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: a :class:`Queue` with ``task_done`` and ``join``."""

    def _push(self, data: bytes) -> None:
        self._script(_PUT_JOINABLE, [self._key("items"), self._key("unfinished")], data)

    def task_done(self) -> None:
        if self._script(_TASK_DONE, [self._key("unfinished"), self._key("joiners")]) < 0:
            raise ValueError("task_done() called too many times")

    def join(self) -> None:
        mine = self._key("j", uuid.uuid4().hex)
        if self._script(_JOIN, [self._key("unfinished"), self._key("joiners")], mine):
            return
        try:
            self._client().blpop([mine], timeout=0)
        finally:
            self._client().delete(mine)


class SimpleQueue(_Shared):
    """``multiprocessing.SimpleQueue``: ``put``, ``get`` (blocking), ``empty``, ``close``."""

    def __init__(self, *, store: Store | None = None) -> None:
        super().__init__(store)
        self._queue = Queue(store=self._store)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_queue": self._queue}

    def put(self, obj: Any) -> None:
        self._queue.put(obj)

    def get(self) -> Any:
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def close(self) -> None:
        self._queue.close()


if __name__ not in cloudpickle.list_registry_pickle_by_value():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
