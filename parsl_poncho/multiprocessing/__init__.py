"""The standard library's ``multiprocessing`` pool API, run on PonchoExecutor workers.

Change the import and keep the code::

    import parsl_poncho.multiprocessing as mp

    with mp.Pool(initializer=load_table) as pool:
        print(pool.map(score, range(1000)))

Where it runs: the PonchoExecutor of a loaded Parsl config (``parsl.load``), else an embedded
default executor with local Work Queue workers on this host's cores, started by the first pool
and stopped at exit (``embedded.configure`` sets its options). Environments are built by the
usual analysis of the pool's function, its initializer and the types of the arguments.

Rules (see the README, "Multiprocessing and joblib"): one chunk is one Work Queue task, run in
one fork of the pool's function server on a node, its calls one after another; the initializer
runs once per node, in that server, before it forks; as with fork, what a call writes to
globals is gone after its chunk.

Modules, as in CPython's ``Lib/multiprocessing``: ``context.py`` (the entry points),
``pool.py`` (``Pool`` and its result classes), ``synchronize.py`` (locks, semaphores,
conditions, events, barriers), ``queues.py``, ``managers.py`` (``Manager`` and its proxies);
ours: ``link.py`` (the narrow interface to the executor), ``embedded.py`` (the default
executor), ``_chunk.py`` (what a chunk ships), ``store.py`` (the Redis store of the shared
state; ``_redis_server.py`` starts the driver's server), ``patching.py`` (``patch()``).

Hooks for layers built on the pool (the joblib backend, ``concurrent.futures``):

- ``Pool.apply_async(func, args, kwds, callback, error_callback, *, cached_inputs=())``:
  ``cached_inputs`` (ours) is a sequence of ``parsl_poncho.workqueue.FileToWq`` sent with that
  task and cached by each worker for every later task (give each a content-derived remote
  name, e.g. ``arg-<sha256>.npy``); the call finds them in its working directory.
- ``link.PoolLink.submit_chunk(kind, func, items, *, cached_inputs=())``: one chunk as one Work
  Queue task, returning a ``concurrent.futures.Future`` of the chunk's list of values.
"""

from __future__ import annotations

from importlib import import_module
from multiprocessing import AuthenticationError, BufferTooShort, ProcessError, TimeoutError
from typing import Any

_EXPORTS = {
    "Pool": "parsl_poncho.multiprocessing.context",
    "cpu_count": "parsl_poncho.multiprocessing.context",
    "get_context": "parsl_poncho.multiprocessing.context",
    "get_start_method": "parsl_poncho.multiprocessing.context",
    "set_start_method": "parsl_poncho.multiprocessing.context",
    "get_all_start_methods": "parsl_poncho.multiprocessing.context",
    "Process": "parsl_poncho.multiprocessing.process",
    "current_process": "parsl_poncho.multiprocessing.process",
    "active_children": "parsl_poncho.multiprocessing.process",
    "parent_process": "parsl_poncho.multiprocessing.process",
    "Pipe": "parsl_poncho.multiprocessing.connection",
    "Value": "parsl_poncho.multiprocessing.sharedctypes",
    "Array": "parsl_poncho.multiprocessing.sharedctypes",
    "RawValue": "parsl_poncho.multiprocessing.sharedctypes",
    "RawArray": "parsl_poncho.multiprocessing.sharedctypes",
    "configure_store": "parsl_poncho.multiprocessing.store",
    "get_store": "parsl_poncho.multiprocessing.store",
    "StoreUnavailable": "parsl_poncho.multiprocessing.store",
    "Barrier": "parsl_poncho.multiprocessing.synchronize",
    "BoundedSemaphore": "parsl_poncho.multiprocessing.synchronize",
    "BrokenBarrierError": "parsl_poncho.multiprocessing.synchronize",
    "Condition": "parsl_poncho.multiprocessing.synchronize",
    "Event": "parsl_poncho.multiprocessing.synchronize",
    "Lock": "parsl_poncho.multiprocessing.synchronize",
    "RLock": "parsl_poncho.multiprocessing.synchronize",
    "Semaphore": "parsl_poncho.multiprocessing.synchronize",
    "Queue": "parsl_poncho.multiprocessing.queues",
    "Manager": "parsl_poncho.multiprocessing.managers",
    "patch": "parsl_poncho.multiprocessing.patching",
    "unpatch": "parsl_poncho.multiprocessing.patching",
    "SimpleQueue": "parsl_poncho.multiprocessing.queues",
    "JoinableQueue": "parsl_poncho.multiprocessing.queues",
}

__all__ = ["AuthenticationError", "BufferTooShort", "ProcessError", "TimeoutError",
           "freeze_support", *sorted(_EXPORTS)]


def freeze_support() -> None:
    """Nothing to do (the standard library's is for frozen Windows executables)."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name in ("pool", "context", "link", "embedded", "process", "connection", "hub",
                    "sharedctypes", "store", "synchronize", "queues", "managers"):
            return import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
