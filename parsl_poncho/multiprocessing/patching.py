"""``patch()``: make ``import multiprocessing`` give ours, for libraries that import the
standard library themselves (pandarallel calls ``multiprocessing.get_context("fork")`` at
import, then uses ``Manager().Queue()`` and ``Pool.starmap_async``).

What it patches, in this (the driver's) process only: ``sys.modules["multiprocessing"]``
becomes a module whose names are ours where ``parsl_poncho.multiprocessing`` has them
(``Pool``, ``get_context``, ``Manager``, ``Queue``, ``Lock``, ...) and the standard library's
otherwise (``multiprocessing.util``, ``parent_process``, submodules such as
``multiprocessing.managers``). Modules that imported ``multiprocessing`` before keep the real
one (so import the library after ``patch()``); workers always run the real standard library.
``unpatch()`` (or leaving the ``with patch():`` block) restores it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["patch", "unpatch"]

_NAME = "multiprocessing"


class _Patched(types.ModuleType):
    """``multiprocessing`` with our names first, the standard library's for the rest."""

    def __init__(self, ours: types.ModuleType, real: types.ModuleType) -> None:
        super().__init__(_NAME, real.__doc__)
        self.__path__ = list(getattr(real, "__path__", []))  # submodule imports still work
        self.__file__ = getattr(real, "__file__", None)
        self._poncho_ours, self._poncho_real = ours, real

    def __getattr__(self, name: str) -> Any:
        ours = self._poncho_ours
        if name in ours.__all__:
            return getattr(ours, name)
        return getattr(self._poncho_real, name)


class patch:  # noqa: N801 - used as a function or a context manager
    """Patch ``multiprocessing`` (see the module's docstring); ``with patch(): ...`` undoes it
    at the end of the block, ``patch()`` alone until :func:`unpatch`.

    >>> import parsl_poncho.multiprocessing as mp
    >>> mp.patch()                                              # doctest: +SKIP
    >>> from pandarallel import pandarallel                     # doctest: +SKIP
    """

    def __init__(self) -> None:
        import multiprocessing as current

        import parsl_poncho.multiprocessing as ours

        real = current._poncho_real if isinstance(current, _Patched) else current
        sys.modules[_NAME] = _Patched(ours, real)

    def __enter__(self) -> types.ModuleType:
        return sys.modules[_NAME]

    def __exit__(self, *exc: object) -> None:
        unpatch()


def unpatch() -> None:
    """Give ``import multiprocessing`` the standard library again."""
    current = sys.modules.get(_NAME)
    if isinstance(current, _Patched):
        sys.modules[_NAME] = current._poncho_real
