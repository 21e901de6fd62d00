"""A multiprocessing.Pool's worker side: its initializer, run once per function server, and its
chunks, run one call after another in one forked call's process.

Imported by function_server.py when started with ``--init FILE`` (poncho_serve copies this file
beside the server), and by the chunk runner that parsl_poncho.multiprocessing ships in each
task, inside the call's process. Standard library + cloudpickle only; no parsl, no parsl_poncho.

FILE holds ``cloudpickle.dumps((initializer, initargs, {}))`` (run_function.py's format). The
server calls ``run_initializer(FILE)`` after its preload and before it forks: what it builds
(module globals, a loaded model, a table) is then inherited by every call's process.

Globals of code pickled by value. A function defined in ``__main__`` (a script) travels by
value: cloudpickle gives each unpickled payload a fresh globals dict, so the chunk's function
would not see what the initializer (from another payload) assigned to the same module's
globals. ``run_initializer`` keeps the initializer's globals dict after the call, and
:func:`run_chunk` copies its values (every name but the module's dunders) into the globals dict
of the chunk's function when that dict is not a real module's and belongs to the same module
(``__name__``). The initializer's values win:
as with ``fork``, the pool's processes see the module as it was when the pool started, plus
what the initializer did to it. Functions of importable modules need nothing: they live in the
module, which the initializer's process imported before the fork.

If the initializer raised, every chunk of the pool raises that exception again (with a note):
the standard library's pool would instead start new worker processes forever.

Regular mode (poncho_serve fell back, or no server ran this initializer): :func:`run_chunk`
runs the initializer from FILE in the task sandbox itself, in the call's own process.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import types
from typing import Any, Callable, Sequence

#: What this process knows about the pool initializer it ran (empty: none ran).
STATE: dict[str, Any] = {}

MAP, STAR, APPLY = 0, 1, 2


def _load(path: str) -> tuple[Callable, tuple, dict]:
    import cloudpickle

    with open(path, "rb") as f:
        initializer, initargs, initkwargs = cloudpickle.loads(f.read())
    return initializer, tuple(initargs or ()), dict(initkwargs or {})


def run_initializer(path: str) -> BaseException | None:
    """Run the initializer in ``path`` in this process, once; returns what it raised, if any."""
    name = os.path.basename(path)
    if STATE.get("init") == name:
        return STATE.get("error")
    STATE.clear()
    STATE["init"] = name
    try:
        initializer, initargs, initkwargs = _load(path)
        initializer(*initargs, **initkwargs)
    except BaseException as exc:  # noqa: B036 - reported to every chunk of the pool
        if hasattr(exc, "add_note"):
            exc.add_note("(raised by the pool's initializer, which runs before any call)")
        STATE["error"] = exc
        return exc
    STATE["globals"] = _by_value_globals(initializer)
    return None


def initialize_server(path: str) -> str:
    """In a pool's function server: :func:`run_initializer`; a line for the server's log."""
    start = time.perf_counter()
    error = run_initializer(path)
    outcome = "ok" if error is None else f"raised {type(error).__name__}: {error}"
    return (f"pool initializer {os.path.basename(path)}: {outcome} "
            f"({time.perf_counter() - start:.3f}s)")


def _by_value_globals(func: Any) -> dict[str, Any]:
    """The globals dict of ``func`` if cloudpickle rebuilt it (code pickled by value)."""
    func = _unwrap(func)
    glob = getattr(func, "__globals__", None)
    if not isinstance(glob, dict):
        return {}
    module = sys.modules.get(glob.get("__name__", ""))
    if module is not None and getattr(module, "__dict__", None) is glob:
        return {}  # a real module's: every fork already sees it
    return glob


def _unwrap(func: Any) -> Any:
    for _ in range(8):
        if isinstance(func, types.MethodType):
            func = func.__func__
        elif isinstance(func, functools.partial):
            func = func.func
        else:
            break
    return func


def share_initializer_globals(func: Callable) -> None:
    """Give ``func`` (pickled by value) the globals the initializer left in its own module."""
    source = STATE.get("globals")
    target = _by_value_globals(func)
    if not source or not target or source is target:
        return
    if source.get("__name__") != target.get("__name__"):
        return  # another module's code: the initializer did not write its globals
    for name, value in source.items():
        if not (name.startswith("__") and name.endswith("__")):
            target[name] = value


def run_chunk(kind: int, func: Callable, items: Sequence[Any], init: str | None) -> list:
    """Run one chunk: ``func(x)`` (MAP), ``func(*x)`` (STAR) or ``func(*args, **kwds)`` for
    ``(args, kwds)`` items (APPLY), one after another; the list of their values.

    ``init`` names the pool's initializer file: run by the server already, else run here.
    The first exception a call raises ends the chunk, as in the standard library's pool.
    """
    if init is not None:
        error = run_initializer(os.path.join(os.getcwd(), init)) if STATE.get(
            "init") != init else STATE.get("error")
        if error is not None:
            raise error
        share_initializer_globals(func)
    if kind == MAP:
        return [func(x) for x in items]
    if kind == STAR:
        return [func(*x) for x in items]
    return [func(*args, **kwds) for args, kwds in items]
