"""``patch()``: make ``import multiprocessing`` give ours, for libraries that import the
standard library themselves (pandarallel calls ``multiprocessing.get_context("fork")`` at
import, then uses ``Manager().Queue()`` and ``Pool.starmap_async``).

What it patches, in this (the driver's) process only: ``sys.modules["multiprocessing"]``
becomes a module whose names are ours where ``parsl_poncho.multiprocessing`` has them
(``Pool``, ``get_context``, ``Manager``, ``Queue``, ``Lock``, ...) and the standard library's
otherwise (``multiprocessing.util``, ``parent_process``, submodules such as
``multiprocessing.managers``). Modules that imported ``multiprocessing`` before keep the real
one (so import the library after ``patch()``); so does the machinery (this package, Parsl,
and the standard library's ``multiprocessing`` and ``concurrent.futures``) whenever it imports
it; workers always run the real standard library.
If dill is installed, ``patch()`` also sets ``dill.settings["recurse"]`` (see
:func:`_dill_globals_by_value`). ``unpatch()`` (or leaving the ``with patch():`` block)
restores both.
"""

from __future__ import annotations

import importlib.util
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
        if name in ours.__all__ and not _is_machinery(sys._getframe(1)):
            return getattr(ours, name)
        return getattr(self._poncho_real, name)


def _is_machinery(frame: types.FrameType | None) -> bool:
    """Whether the code asking is ours, Parsl's or the standard library's multiprocessing
    machinery: modules first imported while patched (the executor, Parsl, lazily imported
    parts of this package) must still get the real ``multiprocessing``, or ours would call
    itself. importlib's frames (``from multiprocessing import X``) stand for their importer."""
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("importlib"):
        frame = frame.f_back
    name = str(frame.f_globals.get("__name__", "")) if frame is not None else ""
    return name.partition(".")[0] in _MACHINERY


#: Top-level packages that always get the real standard library.
_MACHINERY = frozenset({"parsl_poncho", "parsl", "multiprocessing", "concurrent"})


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
        _dill_globals_by_value()  # first: if it raised, nothing would be left patched
        sys.modules[_NAME] = _Patched(ours, real)

    def __enter__(self) -> types.ModuleType:
        return sys.modules[_NAME]

    def __exit__(self, *exc: object) -> None:
        unpatch()


def unpatch() -> None:
    """Give ``import multiprocessing`` the standard library again."""
    current = sys.modules.get(_NAME)
    if isinstance(current, _Patched):
        real = current._poncho_real
        # Submodules first imported while patched were set on the stand-in only.
        for name, value in vars(current).items():
            if (isinstance(value, types.ModuleType) and value.__name__ == f"{_NAME}.{name}"
                    and not hasattr(real, name)):
                setattr(real, name, value)
        sys.modules[_NAME] = real
    if "recurse" in _dill_saved:
        import dill

        dill.settings["recurse"] = _dill_saved.pop("recurse")


#: dill's ``recurse`` setting before :func:`patch` changed it.
_dill_saved: dict[str, Any] = {}


def _dill_globals_by_value() -> None:
    """Have dill pickle the globals a function of the main script uses, by value (its
    documented ``recurse`` setting). By default dill refers to ``__main__``'s globals; on a
    worker ``__main__`` is not the user's script, so pandarallel's functions, which it ships
    with dill, would raise NameError there for every module or constant of the script."""
    if importlib.util.find_spec("dill") is None:
        return
    import dill

    _dill_saved.setdefault("recurse", dill.settings.get("recurse", False))
    dill.settings["recurse"] = True
