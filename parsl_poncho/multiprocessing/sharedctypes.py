"""``Value``, ``Array``, ``RawValue``, ``RawArray``, as ``multiprocessing.sharedctypes``.

Where one is made decides what it is:

- **in a worker's process** (a Pool's initializer, a Process's target: Work Queue sets
  ``WORK_QUEUE_SANDBOX`` there): the standard library's own, node-local shared memory,
  inherited by the processes the node forks after it (a Pool's calls, when its initializer
  made it). Memory speed; seen only on that node.
- **in the driver**: one blob in the store (``_shared.SharedCType``), which any process on any
  node reaches: each item or slice read or write is one network round trip to the store
  (``GETRANGE``/``SETRANGE``); ``get_obj()`` fetches the whole blob once into this process (a
  snapshot numpy can view). With ``lock=True`` (the default for ``Value`` and ``Array``),
  ``get_lock()`` is a store ``RLock`` shared by every process.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes as _stdlib
import os
import uuid
from typing import Any

from parsl_poncho.errors import PonchoError
from parsl_poncho.multiprocessing import _shared

__all__ = ["Array", "RawArray", "RawValue", "SharedCTypesError", "Value"]


class SharedCTypesError(PonchoError):
    """A shared ctypes object cannot be made as asked; the message says what to do."""

#: Set in every Work Queue task's environment: we are in a worker's process.
WORKER_MARK = "WORK_QUEUE_SANDBOX"


def on_worker() -> bool:
    """Whether this process runs as (or under) a Work Queue task."""
    return WORKER_MARK in os.environ


def _ctype(typecode_or_type: Any) -> Any:
    if isinstance(typecode_or_type, str):
        try:
            return _stdlib.typecode_to_type[typecode_or_type]
        except KeyError:
            raise TypeError(f"unknown typecode {typecode_or_type!r}; use one of "
                            f"{''.join(sorted(_stdlib.typecode_to_type))} or a ctypes type"
                            ) from None
    return typecode_or_type


def _get_store() -> Any:
    from parsl_poncho.multiprocessing.store import get_store

    return get_store()


def _in_store(ctype: Any, length: int | None, data: bytes, lock: Any) -> _shared.SharedCType:
    from parsl_poncho.multiprocessing.hub import register_by_value

    register_by_value(_shared)
    store = _get_store()
    key = store.key("sharedctypes", uuid.uuid4().hex)
    store.client().set(key, data)
    return _shared.SharedCType(store, key, ctype, length, lock)


def _lock_for(lock: Any) -> Any:
    if lock is True:
        try:
            from parsl_poncho.multiprocessing.synchronize import RLock
        except ImportError as exc:
            raise SharedCTypesError(
                "a Value or Array made in the driver with lock=True needs the store's RLock "
                "(parsl_poncho.multiprocessing.synchronize), which this installation lacks: "
                "pass lock=False, or use RawValue / RawArray") from exc
        return RLock()
    if lock is False or lock is None:
        return None
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802 - the stdlib's names
    """A ctypes value without a lock (see the module docstring for where it lives)."""
    if on_worker():
        return _stdlib.RawValue(typecode_or_type, *args)
    ctype = _ctype(typecode_or_type)
    return _in_store(ctype, None, bytes(ctype(*args)), None)


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array without a lock: ``size`` zeros, or the items of an initializer."""
    if on_worker():
        return _stdlib.RawArray(typecode_or_type, size_or_initializer)
    return _array(_ctype(typecode_or_type), size_or_initializer, None)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:  # noqa: N802
    """A ctypes value with a lock (``lock=True``: a new RLock; or a given lock; False: none)."""
    if on_worker():
        return _stdlib.Value(typecode_or_type, *args, lock=lock)
    ctype = _ctype(typecode_or_type)
    return _in_store(ctype, None, bytes(ctype(*args)), _lock_for(lock))


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:  # noqa: N802
    """A ctypes array with a lock (see :func:`Value`)."""
    if on_worker():
        return _stdlib.Array(typecode_or_type, size_or_initializer, lock=lock)
    return _array(_ctype(typecode_or_type), size_or_initializer, _lock_for(lock))


def _array(ctype: Any, size_or_initializer: Any, lock: Any) -> _shared.SharedCType:
    if isinstance(size_or_initializer, int):
        if size_or_initializer < 0:
            raise ValueError("Array length must be >= 0")
        return _in_store(ctype, size_or_initializer, bytes(ctypes.sizeof(ctype)
                                                            * size_or_initializer), lock)
    items = list(size_or_initializer)
    return _in_store(ctype, len(items), bytes((ctype * len(items))(*items)), lock)
