"""Value/Array/RawValue/RawArray: the store-backed objects the driver makes behave as the
standard library's sharedctypes (unit tests on fakeredis; the end-to-end ones on a real
redis-server are in test_mp_semantics.py), and in a worker's process the stdlib's own are made.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes as stdlib

import cloudpickle
import fakeredis
import numpy as np
import pytest

from parsl_poncho.multiprocessing import _shared, sharedctypes


class FakeStore:
    """The store's interface (``client()``, ``key()``) on fakeredis; pickles by reference to
    one shared fake server."""

    server = fakeredis.FakeServer()

    def client(self):
        return fakeredis.FakeRedis(server=self.server)

    def key(self, *parts):
        return "test:" + ":".join(parts)


@pytest.fixture
def store(monkeypatch):
    store = FakeStore()
    monkeypatch.delenv(sharedctypes.WORKER_MARK, raising=False)
    monkeypatch.setattr(sharedctypes, "_get_store", lambda: store)
    return store


def made(store, ctype, length, data):
    key = store.key("x", str(id(data)))
    store.client().set(key, data)
    return _shared.SharedCType(store, key, ctype, length)


@pytest.mark.parametrize("ctype, initial", [(ctypes.c_double, [1.5, -2.0, 3.25, 0.0, 7.0]),
                                            (ctypes.c_int, [5, 4, 3, 2, 1, 0]),
                                            (ctypes.c_ubyte, [255, 0, 7])])
def test_store_arrays_index_and_slice_as_stdlib_arrays(store, ctype, initial):
    ours = made(store, ctype, len(initial), bytes((ctype * len(initial))(*initial)))
    theirs = stdlib.RawArray(ctype, initial)
    assert len(ours) == len(theirs) and ours[:] == theirs[:]
    for index in (0, -1, slice(1, 3), slice(None, None, 2), slice(5, 1), slice(-2, None)):
        assert ours[index] == theirs[index], index
    ours[1], theirs[1] = initial[0], initial[0]
    ours[-1], theirs[-1] = initial[1], initial[1]
    ours[0:2], theirs[0:2] = initial[-2:], initial[-2:]
    ours[::2] = theirs[::2] = list(reversed(theirs[::2]))
    assert ours[:] == theirs[:]
    with pytest.raises(IndexError, match=r"invalid index"):
        ours[len(initial)]
    with pytest.raises(ValueError, match=r"Can only assign sequence of same size"):
        ours[0:2] = [initial[0]]
    assert list(ours) == list(theirs)


def test_get_obj_is_a_buffer_numpy_can_view_and_pickles_reach_the_same_blob(store):
    ours = made(store, ctypes.c_float, 4, bytes((ctypes.c_float * 4)(1, 2, 3, 4)))
    view = np.ctypeslib.as_array(ours.get_obj())
    assert view.dtype == np.float32 and view.tolist() == [1, 2, 3, 4]
    assert np.frombuffer(ours.get_obj(), dtype=np.float32).sum() == 10
    copy = cloudpickle.loads(cloudpickle.dumps(ours))
    copy[2] = 30.0
    assert ours[2] == 30.0 and np.ctypeslib.as_array(ours.get_obj())[2] == 30.0


def test_values_and_char_arrays(store):
    value = sharedctypes.RawValue("d", 2.5)
    assert value.value == stdlib.RawValue("d", 2.5).value == 2.5
    value.value += 1
    assert value.value == 3.5 and value.get_obj().value == 3.5
    with pytest.raises(AttributeError, match=r"is raw: it has no lock"):
        value.get_lock()
    with pytest.raises(TypeError, match=r"has no len"):
        len(value)
    chars, theirs = sharedctypes.RawArray("c", b"hello"), stdlib.RawArray("c", b"hello")
    assert chars.value == theirs.value == b"hello" and chars.raw == theirs.raw
    chars.value = theirs.value = b"hi"
    assert chars.value == theirs.value == b"hi" and chars.raw == theirs.raw
    zeros = sharedctypes.RawArray(ctypes.c_int, 3)
    assert zeros[:] == [0, 0, 0]
    with pytest.raises(TypeError, match=r"unknown typecode 'Q!'"):
        sharedctypes.RawArray("Q!", 3)


def test_a_given_lock_is_get_lock_and_the_object_is_its_context_manager(store):
    import threading

    lock = threading.RLock()
    counter = sharedctypes.Value("i", 0, lock=lock)
    assert counter.get_lock() is lock
    with counter:
        counter.value += 1
        assert lock._is_owned()
    assert counter.value == 1
    with pytest.raises(AttributeError, match=r"has no method 'acquire'"):
        sharedctypes.Value("i", 0, lock=3)
    assert sharedctypes.Array("i", 2, lock=False)[:] == [0, 0]


def test_lock_true_gets_the_store_rlock_or_a_clear_error(store):
    try:
        from parsl_poncho.multiprocessing.synchronize import RLock
    except ImportError:
        with pytest.raises(sharedctypes.SharedCTypesError, match=r"pass lock=False"):
            sharedctypes.Value("i", 0)
    else:
        assert isinstance(sharedctypes.Array("i", 3).get_lock(), RLock)


def test_made_in_a_worker_they_are_the_stdlib_shared_memory(monkeypatch):
    monkeypatch.setenv(sharedctypes.WORKER_MARK, "/tmp/sandbox")
    array = sharedctypes.Array("d", [1.0, 2.0])
    assert type(array).__module__ == "multiprocessing.sharedctypes"
    assert array.get_obj()[:] == [1.0, 2.0] and hasattr(array.get_lock(), "acquire")
    assert isinstance(sharedctypes.RawValue("i", 4), ctypes.c_int)
