"""Locks, semaphores, conditions, events and barriers in the store, as in CPython's
``Lib/multiprocessing/synchronize.py``.

A semaphore is a list of tokens: ``acquire`` pops one (``BLPOP`` with the timeout: blocked
callers sleep in the server, no polling), ``release`` pushes one; Lua scripts make the
check-and-change steps (bounds, owners, re-entry counts, barrier arrivals) atomic. Waiters of a
condition, an event or a barrier each block on a list of their own (or of their generation),
which the notifier pushes to, so no wake-up is lost. Objects pickle (store, name): they can be
passed to pool tasks and processes. This module is pickled by value (see ``store.py``): keep it
free of imports from the package other than the store.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from threading import BrokenBarrierError
from typing import Any, Callable

import cloudpickle

from parsl_poncho.multiprocessing.store import Store, get_store

__all__ = ["Barrier", "BoundedSemaphore", "BrokenBarrierError", "Condition", "Event", "Lock",
           "RLock", "Semaphore"]

_TOKEN = b"1"

# KEYS: tokens, owner hash. ARGV: me, bound (0: none). Returns 1, or -1 when over the bound.
_RELEASE = """
local n = tonumber(ARGV[2])
if n > 0 and redis.call('LLEN', KEYS[1]) >= n then return -1 end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[1], '1')
return 1
"""
# KEYS: tokens, owner hash. ARGV: me. Re-entry by the owner, else a free token, else 0.
_RLOCK_TRY = """
if redis.call('HGET', KEYS[2], 'owner') == ARGV[1] then
  return redis.call('HINCRBY', KEYS[2], 'count', 1)
end
if redis.call('LPOP', KEYS[1]) then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'count', 1)
  return 1
end
return 0
"""
# KEYS: tokens, owner hash. ARGV: me. -1 not the owner; else the count left.
_RLOCK_RELEASE = """
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return -1 end
local left = redis.call('HINCRBY', KEYS[2], 'count', -1)
if left == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[1], '1')
end
return left
"""
# KEYS: waiters list. ARGV: n (-1: all). Pushes a token to each woken waiter's own list.
_NOTIFY = """
local n = tonumber(ARGV[1])
local woken = 0
while n < 0 or woken < n do
  local w = redis.call('LPOP', KEYS[1])
  if not w then break end
  redis.call('RPUSH', w, '1')
  woken = woken + 1
end
return woken
"""
# KEYS: flag, waiters. ARGV: my list. 1 if set, else registers me and returns 0.
_EVENT_WAIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 0
"""
# KEYS: flag, waiters.
_EVENT_SET = """
redis.call('SET', KEYS[1], '1')
""" + _NOTIFY.replace("KEYS[1]", "KEYS[2]").replace("tonumber(ARGV[1])", "-1")
# KEYS: state hash. ARGV: parties. {-1} broken; {index, generation}; the last sees index
# parties-1 and must release the others (or break the barrier).
_BARRIER_ARRIVE = """
if redis.call('HGET', KEYS[1], 'broken') == '1' then return {-1, 0} end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
return {count - 1, gen}
"""
# KEYS: state hash. ARGV: generation list prefix, token, gen, reset (1: start a new, unbroken
# generation). Wakes the generation's waiters with the token ('ok' or 'broken').
_BARRIER_WAKE = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[3]) then return 0 end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
local woken = count
if ARGV[2] == 'ok' then woken = count - 1 end
for i = 1, woken do redis.call('RPUSH', ARGV[1] .. gen, ARGV[2]) end
if ARGV[2] == 'ok' or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'gen', gen + 1, 'count', 0, 'broken', '0')
else
  redis.call('HSET', KEYS[1], 'broken', '1', 'count', 0)
end
return woken
"""


def _me() -> str:
    """This thread of this process of this host: the owner of what it acquires."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class _Shared:
    """A named object in the store; pickles as (store, name, settings)."""

    _settings: tuple[str, ...] = ()

    def __init__(self, store: Store | None = None, name: str | None = None) -> None:
        self._store = store or get_store()
        self._name = name or f"{type(self).__name__.lower()}:{uuid.uuid4().hex}"

    def _key(self, *parts: str) -> str:
        return self._store.key(self._name, *parts)

    def _client(self) -> Any:
        return self._store.client()

    def _script(self, source: str, keys: list[str], *args: Any) -> Any:
        return self._client().eval(source, len(keys), *keys, *args)

    def __getstate__(self) -> dict[str, Any]:
        return {"_store": self._store, "_name": self._name,
                **{k: getattr(self, k) for k in self._settings}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name}>"


def _wait_time(block: bool, timeout: float | None) -> float | None:
    """The BLPOP timeout for ``acquire(block, timeout)``: None means do not block; 0 forever."""
    if not block:
        return None
    if timeout is None:
        return 0
    return max(timeout, 0.001)  # BLPOP's 0 would be forever


class Semaphore(_Shared):
    """``multiprocessing.Semaphore(value)``: ``acquire(block, timeout)``, ``release``,
    ``get_value``."""

    _bound = 0
    _settings = ("_bound",)

    def __init__(self, value: int = 1, *, store: Store | None = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        super().__init__(store)
        if value:
            self._client().rpush(self._key("tokens"), *[_TOKEN] * value)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        wait = _wait_time(block, timeout)
        client = self._client()
        if wait is None:
            got = client.lpop(self._key("tokens")) is not None
        else:
            got = client.blpop([self._key("tokens")], timeout=wait) is not None
        if got:
            client.hset(self._key("owner"), "owner", _me())
        return got

    def release(self) -> None:
        if self._script(_RELEASE, [self._key("tokens"), self._key("owner")], _me(),
                        self._bound) < 0:
            raise ValueError("semaphore or lock released too many times")

    def get_value(self) -> int:
        return int(self._client().llen(self._key("tokens")))

    def _is_mine(self) -> bool:
        return self._client().hget(self._key("owner"), "owner") == _me().encode()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A semaphore released at most as often as acquired (else ``ValueError``)."""

    def __init__(self, value: int = 1, *, store: Store | None = None) -> None:
        super().__init__(value, store=store)
        self._bound = value


class Lock(BoundedSemaphore):
    """``multiprocessing.Lock``: any process may release it; releasing it unlocked raises
    ``ValueError``, as the standard library's."""

    def __init__(self, *, store: Store | None = None) -> None:
        super().__init__(1, store=store)


class RLock(_Shared):
    """``multiprocessing.RLock``: re-entrant for its owner (a thread of a process), counted."""

    def __init__(self, *, store: Store | None = None) -> None:
        super().__init__(store)
        self._client().rpush(self._key("tokens"), _TOKEN)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        keys = [self._key("tokens"), self._key("owner")]
        if self._script(_RLOCK_TRY, keys, _me()) > 0:
            return True
        wait = _wait_time(block, timeout)
        if wait is None:
            return False
        if self._client().blpop([keys[0]], timeout=wait) is None:
            return False
        self._client().hset(keys[1], mapping={"owner": _me(), "count": 1})
        return True

    def release(self) -> None:
        if self._script(_RLOCK_RELEASE, [self._key("tokens"), self._key("owner")], _me()) < 0:
            raise AssertionError("attempt to release recursive lock not owned by thread")

    def _is_mine(self) -> bool:
        return self._client().hget(self._key("owner"), "owner") == _me().encode()

    def _count(self) -> int:
        return int(self._client().hget(self._key("owner"), "count") or 0)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Condition(_Shared):
    """``multiprocessing.Condition(lock=None)`` (an :class:`RLock` by default)."""

    _settings = ("_lock",)

    def __init__(self, lock: Lock | RLock | None = None, *, store: Store | None = None) -> None:
        super().__init__(store or (lock._store if lock is not None else None))
        self._lock = lock if lock is not None else RLock(store=self._store)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock._is_mine():
            raise AssertionError("must acquire() condition before using wait()")
        mine = self._key("w", uuid.uuid4().hex)
        self._client().rpush(self._key("waiters"), mine)
        depth = self._lock._count() if isinstance(self._lock, RLock) else 1
        for _ in range(depth):
            self._lock.release()
        try:
            woken = self._client().blpop([mine], timeout=_wait_time(True, timeout)) is not None
        finally:
            self._client().lrem(self._key("waiters"), 0, mine)
            self._client().delete(mine)
            for _ in range(depth):
                self._lock.acquire()
        return woken

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        result = predicate()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        self._script(_NOTIFY, [self._key("waiters")], n)

    def notify_all(self) -> None:
        self.notify(-1)


class Event(_Shared):
    """``multiprocessing.Event``: ``set``, ``clear``, ``is_set``, ``wait(timeout)``."""

    def is_set(self) -> bool:
        return bool(self._client().exists(self._key("flag")))

    def set(self) -> None:
        self._script(_EVENT_SET, [self._key("flag"), self._key("waiters")])

    def clear(self) -> None:
        self._client().delete(self._key("flag"))

    def wait(self, timeout: float | None = None) -> bool:
        mine = self._key("w", uuid.uuid4().hex)
        if self._script(_EVENT_WAIT, [self._key("flag"), self._key("waiters")], mine):
            return True
        try:
            self._client().blpop([mine], timeout=_wait_time(True, timeout))
        finally:
            self._client().lrem(self._key("waiters"), 0, mine)
            self._client().delete(mine)
        return self.is_set()


class Barrier(_Shared):
    """``multiprocessing.Barrier(parties, action, timeout)``: ``wait`` returns an index in
    ``range(parties)``; a timeout, an ``abort``, a ``reset`` or a failing ``action`` breaks
    it (``BrokenBarrierError``). The last party to arrive runs ``action``."""

    _settings = ("_parties", "_action", "_timeout")

    def __init__(self, parties: int, action: Callable[[], Any] | None = None,
                 timeout: float | None = None, *, store: Store | None = None) -> None:
        if parties < 1:
            raise ValueError("parties must be >= 1")
        super().__init__(store)
        self._parties, self._action, self._timeout = parties, action, timeout
        self._client().hset(self._key("state"), mapping={"gen": 0, "count": 0, "broken": 0})

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            timeout = self._timeout
        index, gen = self._script(_BARRIER_ARRIVE, [self._key("state")], self._parties)
        if index < 0:
            raise BrokenBarrierError
        if index == self._parties - 1:
            try:
                if self._action is not None:
                    self._action()
            except BaseException:
                self._wake(gen, "broken")
                raise
            self._wake(gen, "ok")
            return index
        got = self._client().blpop([self._key("gen", str(gen))],
                                   timeout=_wait_time(True, timeout))
        if got is None:  # timed out: break it for everyone, as the standard library does
            self._wake(gen, "broken")
            raise BrokenBarrierError
        if got[1] != b"ok":
            raise BrokenBarrierError
        return index

    def _wake(self, gen: int, token: str, reset: bool = False) -> None:
        self._script(_BARRIER_WAKE, [self._key("state")], self._key("gen", ""), token, gen,
                     "1" if reset else "0")

    def _state(self) -> dict[bytes, bytes]:
        return self._client().hgetall(self._key("state"))

    def abort(self) -> None:
        self._wake(int(self._state()[b"gen"]), "broken")

    def reset(self) -> None:
        self._wake(int(self._state()[b"gen"]), "broken", reset=True)

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        state = self._state()
        return 0 if state.get(b"broken") == b"1" else int(state.get(b"count", 0))

    @property
    def broken(self) -> bool:
        return self._state().get(b"broken") == b"1"


if __name__ not in cloudpickle.list_registry_pickle_by_value():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
