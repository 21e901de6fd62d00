"""``Manager()`` and its proxies in the store, as CPython's ``Lib/multiprocessing/managers.py``
gives them: ``dict``, ``list``, ``Namespace``, ``Value``, ``Array``, plus the queues, locks and
events of ``queues.py`` and ``synchronize.py`` (which are proxies already).

There is no manager process: the store is the server, and every proxy method is one Redis
command or one Lua script, so each is atomic and none reads and rewrites the whole object.
Values are pickled; dict keys and list items are compared by their pickle (``1`` and ``1.0``
are different keys here). Proxies pickle (store, name), so they go into ``Pool`` initargs and
task arguments. Pickled by value (see ``store.py``).
"""

from __future__ import annotations

import pickle
import sys
import uuid
from typing import Any, Iterable, Iterator

import cloudpickle
import redis

from parsl_poncho.multiprocessing import queues as _q
from parsl_poncho.multiprocessing import synchronize as _s
from parsl_poncho.multiprocessing.store import Store, get_store
from parsl_poncho.multiprocessing.synchronize import _Shared

__all__ = ["ArrayProxy", "DictProxy", "ListProxy", "Manager", "NamespaceProxy", "SyncManager",
           "ValueProxy"]


def _dump(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=4)  # one protocol: equal keys, equal bytes


# KEYS: hash, order, seq. ARGV: field, value, ... Sets each; a new field goes last in order.
_DICT_SET = """
for i = 1, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
  end
end
"""
# KEYS: hash, order. ARGV: field. The value (nil if absent), removed.
_DICT_POP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then redis.call('HDEL', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]) end
return v
"""
# KEYS: hash, order. The last field set and its value, removed ({} if empty).
_DICT_POPITEM = """
local f = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
if not f then return {} end
local v = redis.call('HGET', KEYS[1], f)
redis.call('HDEL', KEYS[1], f); redis.call('ZREM', KEYS[2], f)
return {f, v}
"""
# KEYS: hash, order, seq. ARGV: field, default. The value, set to default if absent.
_DICT_SETDEFAULT = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
return ARGV[2]
"""
# KEYS: hash, order. {fields, values} in insertion order.
_DICT_ITEMS = """
local fields = redis.call('ZRANGE', KEYS[2], 0, -1)
if #fields == 0 then return {{}, {}} end
return {fields, redis.call('HMGET', KEYS[1], unpack(fields))}
"""
# KEYS: list. ARGV: index, sentinel, delete-only. The item at index, removed; error if none.
_LIST_POP = """
local n = redis.call('LLEN', KEYS[1])
local i = tonumber(ARGV[1])
if i < 0 then i = n + i end
if i < 0 or i >= n then return redis.error_reply('index out of range') end
local v = redis.call('LINDEX', KEYS[1], i)
redis.call('LSET', KEYS[1], i, ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[2])
return v
"""
# KEYS: list. ARGV: index, item. Python's list.insert.
_LIST_INSERT = """
local n = redis.call('LLEN', KEYS[1])
local i = tonumber(ARGV[1])
if i < 0 then i = math.max(n + i, 0) end
if i >= n then return redis.call('RPUSH', KEYS[1], ARGV[2]) end
if i == 0 then return redis.call('LPUSH', KEYS[1], ARGV[2]) end
local tail = redis.call('LRANGE', KEYS[1], i, -1)
redis.call('LTRIM', KEYS[1], 0, i - 1)
redis.call('RPUSH', KEYS[1], ARGV[2])
for _, v in ipairs(tail) do redis.call('RPUSH', KEYS[1], v) end
return n + 1
"""


class DictProxy(_Shared):
    """``Manager().dict()``: a Redis hash (values) and sorted set (insertion order)."""

    def __init__(self, *args: Any, store: Store | None = None, **kwargs: Any) -> None:
        super().__init__(store)
        initial = dict(*args, **kwargs)
        if initial:
            self.update(initial)

    def _keys3(self) -> list[str]:
        return [self._key("h"), self._key("order"), self._key("seq")]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._script(_DICT_SET, self._keys3(), _dump(key), _dump(value))

    def __getitem__(self, key: Any) -> Any:
        data = self._client().hget(self._key("h"), _dump(key))
        if data is None:
            raise KeyError(key)
        return pickle.loads(data)

    def __delitem__(self, key: Any) -> None:
        if self._script(_DICT_POP, self._keys3()[:2], _dump(key)) is None:
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return bool(self._client().hexists(self._key("h"), _dump(key)))

    def __len__(self) -> int:
        return int(self._client().hlen(self._key("h")))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def get(self, key: Any, default: Any = None) -> Any:
        data = self._client().hget(self._key("h"), _dump(key))
        return default if data is None else pickle.loads(data)

    def pop(self, key: Any, *default: Any) -> Any:
        data = self._script(_DICT_POP, self._keys3()[:2], _dump(key))
        if data is None:
            if default:
                return default[0]
            raise KeyError(key)
        return pickle.loads(data)

    def popitem(self) -> tuple[Any, Any]:
        got = self._script(_DICT_POPITEM, self._keys3()[:2])
        if not got:
            raise KeyError("popitem(): dictionary is empty")
        return pickle.loads(got[0]), pickle.loads(got[1])

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return pickle.loads(self._script(_DICT_SETDEFAULT, self._keys3(), _dump(key),
                                         _dump(default)))

    def update(self, *args: Any, **kwargs: Any) -> None:
        flat: list[bytes] = []
        for key, value in dict(*args, **kwargs).items():
            flat += [_dump(key), _dump(value)]
        if flat:
            self._script(_DICT_SET, self._keys3(), *flat)

    def items(self) -> list[tuple[Any, Any]]:
        fields, values = self._script(_DICT_ITEMS, self._keys3()[:2])
        return [(pickle.loads(f), pickle.loads(v)) for f, v in zip(fields, values)
                if v is not None]

    def keys(self) -> list[Any]:
        return [k for k, _ in self.items()]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def copy(self) -> dict:
        return dict(self.items())

    def clear(self) -> None:
        self._client().delete(*self._keys3())


class ListProxy(_Shared):
    """``Manager().list()``: a Redis list of pickled items."""

    def __init__(self, sequence: Iterable[Any] = (), *, store: Store | None = None) -> None:
        super().__init__(store)
        self.extend(sequence)

    def _all(self) -> list[Any]:
        return [pickle.loads(d) for d in self._client().lrange(self._key("l"), 0, -1)]

    def __len__(self) -> int:
        return int(self._client().llen(self._key("l")))

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._all()[index]
        script = "local n = redis.call('LLEN', KEYS[1]); local i = tonumber(ARGV[1]); " \
                 "if i < 0 then i = n + i end; if i < 0 or i >= n then return false end; " \
                 "return {redis.call('LINDEX', KEYS[1], i)}"
        got = self._script(script, [self._key("l")], int(index))
        if not got:
            raise IndexError("list index out of range")
        return pickle.loads(got[0])

    def __setitem__(self, index: int, value: Any) -> None:
        try:
            self._client().lset(self._key("l"), int(index), _dump(value))
        except redis.exceptions.ResponseError as exc:
            raise IndexError("list assignment index out of range") from exc

    def __delitem__(self, index: int) -> None:
        self.pop(index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._all())

    def __contains__(self, value: Any) -> bool:
        return value in self._all()

    def __iadd__(self, other: Iterable[Any]) -> ListProxy:
        self.extend(other)
        return self

    def append(self, value: Any) -> None:
        self._client().rpush(self._key("l"), _dump(value))

    def extend(self, values: Iterable[Any]) -> None:
        data = [_dump(v) for v in values]
        if data:
            self._client().rpush(self._key("l"), *data)

    def insert(self, index: int, value: Any) -> None:
        self._script(_LIST_INSERT, [self._key("l")], int(index), _dump(value))

    def pop(self, index: int = -1) -> Any:
        try:
            data = self._script(_LIST_POP, [self._key("l")], int(index),
                                f"\0poncho-deleted-{uuid.uuid4().hex}")
        except redis.exceptions.ResponseError as exc:
            raise IndexError("pop index out of range") from exc
        return pickle.loads(data)

    def remove(self, value: Any) -> None:
        if not self._client().lrem(self._key("l"), 1, _dump(value)):
            raise ValueError("list.remove(x): x not in list")

    def index(self, value: Any, *args: int) -> int:
        return self._all().index(value, *args)

    def count(self, value: Any) -> int:
        return self._all().count(value)

    def reverse(self) -> None:
        self._rewrite(lambda items: items[::-1])

    def sort(self, key: Any = None, reverse: bool = False) -> None:
        self._rewrite(lambda items: sorted(items, key=key, reverse=reverse))

    def _rewrite(self, change: Any) -> None:
        """Reorder atomically: WATCH, compute here, MULTI/EXEC; again if it changed."""
        name = self._key("l")
        with self._client().pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)
                    items = change([pickle.loads(d) for d in pipe.lrange(name, 0, -1)])
                    pipe.multi()
                    pipe.delete(name)
                    if items:
                        pipe.rpush(name, *[_dump(v) for v in items])
                    pipe.execute()
                    return
                except redis.exceptions.WatchError:
                    continue


class NamespaceProxy(_Shared):
    """``Manager().Namespace(**kwds)``: attributes in a Redis hash."""

    def __init__(self, *, store: Store | None = None, **kwds: Any) -> None:
        super().__init__(store)
        for name, value in kwds.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        data = self._client().hget(self._key("ns"), name)
        if data is None:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}")
        return pickle.loads(data)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._client().hset(self._key("ns"), name, _dump(value))

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        elif not self._client().hdel(self._key("ns"), name):
            raise AttributeError(name)


class ValueProxy(_Shared):
    """``Manager().Value(typecode, value)``: ``get``, ``set`` and ``value``."""

    def __init__(self, typecode: Any, value: Any, lock: bool = True, *,
                 store: Store | None = None) -> None:
        super().__init__(store)
        self.set(value)

    def get(self) -> Any:
        return pickle.loads(self._client().get(self._key("v")))

    def set(self, value: Any) -> None:
        self._client().set(self._key("v"), _dump(value))

    value = property(get, set)


class ArrayProxy(ListProxy):
    """``Manager().Array(typecode, sequence)``: ``len``, indexing and assignment."""

    def __init__(self, typecode: Any, sequence: Iterable[Any], lock: bool = True, *,
                 store: Store | None = None) -> None:
        super().__init__(sequence, store=store)


class SyncManager:
    """``multiprocessing.Manager()``: ``start``/``shutdown`` (and ``with``), and the factories.

    Its objects live in the store under a prefix of its own; ``shutdown`` deletes them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._store: Store | None = None

    def start(self, initializer: Any = None, initargs: Iterable[Any] = ()) -> None:
        if self._store is not None:
            raise RuntimeError("Already started server")
        base = get_store()
        self._store = Store(base.url, base.key("manager", uuid.uuid4().hex, ""))
        if initializer is not None:
            initializer(*initargs)

    def shutdown(self) -> None:
        if self._store is not None:
            self._store.delete_keys()
            self._store = None

    def __enter__(self) -> SyncManager:
        if self._store is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _started(self) -> Store:
        if self._store is None:
            raise ValueError("Manager has not been started")  # the stdlib's message
        return self._store

    def dict(self, *args: Any, **kwargs: Any) -> DictProxy:  # noqa: A003
        return DictProxy(*args, store=self._started(), **kwargs)

    def list(self, sequence: Iterable[Any] = ()) -> ListProxy:  # noqa: A003
        return ListProxy(sequence, store=self._started())

    def Namespace(self, **kwds: Any) -> NamespaceProxy:  # noqa: N802
        return NamespaceProxy(store=self._started(), **kwds)

    def Value(self, typecode: Any, value: Any, lock: bool = True) -> ValueProxy:  # noqa: N802
        return ValueProxy(typecode, value, lock, store=self._started())

    def Array(self, typecode: Any, sequence: Iterable[Any], lock: bool = True  # noqa: N802
              ) -> ArrayProxy:
        return ArrayProxy(typecode, sequence, lock, store=self._started())

    def Queue(self, maxsize: int = 0) -> _q.Queue:  # noqa: N802
        return _q.Queue(maxsize, store=self._started())

    def JoinableQueue(self, maxsize: int = 0) -> _q.JoinableQueue:  # noqa: N802
        return _q.JoinableQueue(maxsize, store=self._started())

    def Lock(self) -> _s.Lock:  # noqa: N802
        return _s.Lock(store=self._started())

    def RLock(self) -> _s.RLock:  # noqa: N802
        return _s.RLock(store=self._started())

    def Semaphore(self, value: int = 1) -> _s.Semaphore:  # noqa: N802
        return _s.Semaphore(value, store=self._started())

    def BoundedSemaphore(self, value: int = 1) -> _s.BoundedSemaphore:  # noqa: N802
        return _s.BoundedSemaphore(value, store=self._started())

    def Condition(self, lock: Any = None) -> _s.Condition:  # noqa: N802
        return _s.Condition(lock, store=self._started())

    def Event(self) -> _s.Event:  # noqa: N802
        return _s.Event(store=self._started())

    def Barrier(self, parties: int, action: Any = None,  # noqa: N802
                timeout: float | None = None) -> _s.Barrier:
        return _s.Barrier(parties, action, timeout, store=self._started())


def Manager() -> SyncManager:  # noqa: N802 - the standard library's name
    """A started :class:`SyncManager` (as ``multiprocessing.Manager()``)."""
    manager = SyncManager()
    manager.start()
    return manager


if __name__ not in cloudpickle.list_registry_pickle_by_value():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
