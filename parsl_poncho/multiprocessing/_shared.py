"""Shared ctypes objects made in the driver: one blob per object in the store (Redis).

cloudpickle pickles this module BY VALUE (``sharedctypes.py`` registers it), so a worker needs
only the ``redis`` client (the store object carried along brings it): keep it free of imports
from the package.

A value or an array is one Redis string of ``sizeof(type) * length`` bytes, in the machine's
layout (the submit host and the workers must agree on it: same architecture, as the
environments already require). Reading an item or a slice is one ``GETRANGE`` of its bytes,
writing one ``SETRANGE``: each is one network round trip and atomic by itself. ``get_obj()``
is one ``GET`` of the whole blob into a ctypes object of this process, which numpy can view
(``np.ctypeslib.as_array``, ``np.frombuffer``): a snapshot, since a process cannot map memory
on another host. Writes go through item or slice assignment.
"""

from __future__ import annotations

import ctypes
from typing import Any


class SharedCType:
    """A ctypes value (``length`` None) or array of ``ctype`` kept in the store at ``key``.

    :param store: the store (``store.client()`` gives a ``redis.Redis``).
    :param lock: the lock ``get_lock()`` returns (None: a raw object, as ``RawValue``).
    """

    def __init__(self, store: Any, key: str, ctype: Any, length: int | None,
                 lock: Any = None) -> None:
        self._store, self._key, self._ctype, self._length = store, key, ctype, length
        self._lock = lock
        self._size = ctypes.sizeof(ctype)

    def __reduce__(self) -> tuple:
        return (type(self), (self._store, self._key, self._ctype, self._length, self._lock))

    def __repr__(self) -> str:
        kind = "Value" if self._length is None else f"Array[{self._length}]"
        return f"<store {kind} of {self._ctype.__name__} {self._key!r}>"

    # -- bytes --------------------------------------------------------------------------------
    def _read(self, start: int, count: int) -> bytes:
        if count <= 0:
            return b""
        first = start * self._size
        data = self._store.client().getrange(self._key, first, first + count * self._size - 1)
        if len(data) != count * self._size:
            raise RuntimeError(f"shared object {self._key!r} is gone from the store (the "
                               "driver that made it has exited)")
        return bytes(data)

    def _write(self, start: int, data: bytes) -> None:
        if data:
            self._store.client().setrange(self._key, start * self._size, data)

    def _array_of(self, count: int, data: bytes) -> Any:
        return (self._ctype * count).from_buffer_copy(data)

    # -- a Value ----------------------------------------------------------------------------
    @property
    def value(self) -> Any:
        """The value (of a Value); of a ``c_char`` array, its bytes up to the first NUL."""
        if self._length is None:
            return self._ctype.from_buffer_copy(self._read(0, 1)).value
        if self._ctype is not ctypes.c_char:
            raise AttributeError(f"{self!r} has no attribute 'value'")
        return self.raw.split(b"\0", 1)[0]

    @value.setter
    def value(self, new: Any) -> None:
        if self._length is None:
            self._write(0, bytes(self._ctype(new)))
            return
        if self._ctype is not ctypes.c_char:
            raise AttributeError(f"{self!r} has no attribute 'value'")
        if len(new) > self._length:
            raise ValueError("byte string too long")
        self._write(0, bytes(new) + (b"\0" if len(new) < self._length else b""))

    @property
    def raw(self) -> bytes:
        """All the bytes of a ``c_char`` array."""
        if self._ctype is not ctypes.c_char or self._length is None:
            raise AttributeError(f"{self!r} has no attribute 'raw'")
        return self._read(0, self._length)

    # -- an Array ---------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._length is None:
            raise TypeError(f"object of type {type(self).__name__!r} (a Value) has no len()")
        return self._length

    def __getitem__(self, index: Any) -> Any:
        length = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(length)
            if step == 1:
                return self._array_of(max(0, stop - start), self._read(start, stop - start))[:]
            return self._array_of(length, self._read(0, length))[index]
        i = _index(index, length)
        return self._ctype.from_buffer_copy(self._read(i, 1)).value

    def __setitem__(self, index: Any, value: Any) -> None:
        length = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(length)
            items = list(value)
            if step == 1:
                if len(items) != max(0, stop - start):
                    raise ValueError("Can only assign sequence of same size")
                if items:
                    self._write(start, bytes((self._ctype * len(items))(*items)))
                return
            whole = self._array_of(length, self._read(0, length))
            whole[index] = items
            self._write(0, bytes(whole))
            return
        self._write(_index(index, length), bytes(self._ctype(value)))

    def __iter__(self) -> Any:
        return iter(self[:])

    # -- the synchronized wrapper's API -----------------------------------------------------
    def get_obj(self) -> Any:
        """The whole object as a ctypes object of this process (a snapshot numpy can view)."""
        if self._length is None:
            return self._ctype.from_buffer_copy(self._read(0, 1))
        return self._array_of(self._length, self._read(0, self._length))

    def get_lock(self) -> Any:
        """The lock made with this object (``lock=True``: a store RLock).

        :raises AttributeError: a raw object (``RawValue``, ``RawArray``, ``lock=False``).
        """
        if self._lock is None:
            raise AttributeError(f"{self!r} is raw: it has no lock")
        return self._lock

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return self.get_lock().acquire(*args, **kwargs)

    def release(self) -> None:
        self.get_lock().release()

    def __enter__(self) -> Any:
        return self.get_lock().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.get_lock().__exit__(*exc)


def _index(index: int, length: int) -> int:
    i = index.__index__()
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError("invalid index")
    return i
