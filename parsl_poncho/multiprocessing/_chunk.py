"""What a chunk ships to the worker: a trampoline into worker_shim/pool_init.py, and a reference
to the pool's initializer file.

cloudpickle pickles this module BY VALUE (``link.py`` registers it), so the environment on the
worker needs neither parsl nor parsl_poncho: only the standard library and the pool_init.py
that serverless tasks carry. Keep it free of imports from the package.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Callable, Sequence

#: The worker-side module (worker_shim/pool_init.py, in the task sandbox and beside the server);
#: named through a variable so the dependency analysis does not look for it on this host.
_WORKER_MODULE = "pool_init"


class InitRef(tuple):
    """The pool's initializer, as a chunk carries it: ``(file name, initializer, initargs)``
    here, only the file name on the worker (the server ran the file already).

    A tuple so that the analysis of each chunk, which walks the items of its tuple arguments
    whatever their class, puts what the initializer needs in the environment.
    """

    def __new__(cls, name: str, initializer: Callable | None = None,
                initargs: tuple = ()) -> InitRef:
        return super().__new__(cls, (name, initializer, tuple(initargs)))

    @property
    def name(self) -> str:
        return str(self[0])

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (InitRef, (self[0],))


def run_chunk(kind: int, func: Callable, items: Sequence[Any], init: InitRef | None) -> list:
    """On the worker: run one chunk's calls, one after another (see pool_init.run_chunk)."""
    worker = importlib.import_module(_WORKER_MODULE)
    return worker.run_chunk(kind, func, items, init.name if init is not None else None)


def runner_name(func: Callable) -> tuple[str, str, str]:
    """``(module, qualname, name)`` of a pool function (of its class for a callable object)."""
    name = getattr(func, "__name__", None) or type(func).__name__
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or name
    return str(module), str(qualname), str(name)


def runner_for(module: str, qualname: str, name: str) -> Callable:
    """A copy of :func:`run_chunk` named after a pool function (see :func:`runner_name`): the
    executor then files each function's chunks under its own name (Work Queue category,
    sizing, logs) and learns what each misses at run time apart from the others."""
    runner = types.FunctionType(run_chunk.__code__, run_chunk.__globals__, name,
                                run_chunk.__defaults__, run_chunk.__closure__)
    runner.__qualname__ = f"run_chunk[{module}.{qualname}]"
    runner.__module__ = run_chunk.__module__
    runner.__doc__ = run_chunk.__doc__
    return runner
