"""The entry points, as in CPython's ``Lib/multiprocessing/context.py``: ``Pool``,
``cpu_count``, ``get_context``, ``set_start_method``, ``get_start_method``.

There is one context. Work runs on PonchoExecutor workers, always as a fork of a function server
that has the pool's environment loaded; the start method names are accepted (so code written
for ``spawn`` or ``fork`` runs unchanged) and change nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from parsl_poncho.multiprocessing.pool import Pool

__all__ = ["PonchoContext", "Pool", "cpu_count", "get_all_start_methods", "get_context",
           "get_start_method", "set_start_method"]

_START_METHODS = ("fork", "spawn", "forkserver")


def cpu_count() -> int:
    """The cores the workers offer (the default number of a pool's processes).

    With no Parsl config loaded this starts the embedded default executor, as a pool would.
    """
    from parsl_poncho.multiprocessing.link import current_executor, default_processes

    return default_processes(current_executor())


class PonchoContext:
    """The context object ``get_context()`` returns: the module's API, bound to one method."""

    def __init__(self) -> None:
        self._actual_method: str | None = None

    def Pool(self, processes: int | None = None, initializer: Callable | None = None,  # noqa: N802
             initargs: Sequence[Any] = (), maxtasksperchild: int | None = None) -> Pool:
        """A :class:`~parsl_poncho.multiprocessing.pool.Pool`."""
        return Pool(processes, initializer, initargs, maxtasksperchild, context=self)

    def __getattr__(self, name: str) -> Any:
        """The package's other entry points (``Process``, ``Pipe``, ``Value``, ...)."""
        import parsl_poncho.multiprocessing as package

        if name.startswith("_") or name not in package._EXPORTS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(package, name)

    def cpu_count(self) -> int:
        """See :func:`cpu_count`."""
        return cpu_count()

    def get_context(self, method: str | None = None) -> PonchoContext:
        """This context; ``method`` must name a start method.

        :raises ValueError: an unknown start method.
        """
        if method is not None and method not in _START_METHODS:
            raise ValueError(f"cannot find context for {method!r}")
        return self

    def get_start_method(self, allow_none: bool = False) -> str | None:
        """The start method set (``fork`` unless set; None with ``allow_none`` if unset)."""
        if self._actual_method is None and not allow_none:
            self._actual_method = "fork"
        return self._actual_method

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Record the start method (it changes nothing here).

        :raises RuntimeError: it was set already and ``force`` is false.
        :raises ValueError: an unknown start method.
        """
        if self._actual_method is not None and not force:
            raise RuntimeError("context has already been set")
        if method is not None and method not in _START_METHODS:
            raise ValueError(f"cannot find context for {method!r}")
        self._actual_method = method

    def get_all_start_methods(self) -> list[str]:
        """The start methods accepted."""
        return list(_START_METHODS)


_default_context = PonchoContext()
get_context = _default_context.get_context
get_start_method = _default_context.get_start_method
set_start_method = _default_context.set_start_method
get_all_start_methods = _default_context.get_all_start_methods
