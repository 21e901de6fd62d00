"""When a memoised analysis still describes a callable, without keeping anything alive.

A :class:`MemoEntry` remembers what an analysis read: the callable's code object, defaults,
closure cells and the global bindings it looked up, each by a *fingerprint* (a weak reference,
a strong one for module-level objects their module keeps alive anyway, or just the type), and
the stat signatures of the local code files it hashed. :func:`still_valid` compares them with
the callable now; :func:`local_fresh` looks at the files at most once per
:data:`LOCAL_RECHECK_SECONDS`, so an edited local module gets a new content hash, hence a new
spec.
"""

from __future__ import annotations

import functools
import sys
import time
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parsl_poncho.analyze.modules import ATOMIC, ModuleUse
from parsl_poncho.codehash import Signature, code_signature

if TYPE_CHECKING:
    from parsl_poncho.analyze.analyzer import Requirements
    from parsl_poncho.spec import Spec

_MISSING = object()
#: A memo entry with local code re-checks its files' stat signatures at most this often (s).
LOCAL_RECHECK_SECONDS = 1.0


@dataclass
class MemoEntry:
    """What one analysis of a callable read, and what it found."""

    holder: Any  # weakref to what holds the root's globals (its module, or the function)
    code: Any  # weakref to the code object (None for classes and builtins)
    defaults: tuple[Any, ...]
    kwdefaults: tuple[tuple[str, Any], ...]
    cells: tuple[Any, ...]
    bindings: tuple[tuple[Any, str, Any], ...]
    requirements: Requirements
    spec: Spec
    uses: dict[str, ModuleUse]
    by_args: dict[frozenset[str], tuple[Requirements, Spec]] = field(default_factory=dict)
    # (path, stat signature) of the local code in requirements and by_args, as analysed
    local_files: tuple[tuple[str, Signature], ...] = ()
    checked: float = 0.0  # time.monotonic() of the last look at local_files
    stale: bool = False  # local_files changed: never serve this entry again


def new_entry(root: Any, bindings: Any, requirements: Requirements, spec: Spec,
              uses: dict[str, ModuleUse], files: dict[str, Signature]) -> MemoEntry:
    """The entry of an analysis of ``root`` that read the global ``bindings`` (owner, name,
    value) and hashed the local ``files``."""
    seen: dict[tuple[int, str], tuple[Any, str, Any]] = {}
    for owner, name, value in bindings:
        holder = globals_holder(owner)
        seen[(id(holder), name)] = (weakref.ref(holder), name, _fingerprint(value))
    is_func = isinstance(root, types.FunctionType)
    return MemoEntry(
        holder=weakref.ref(globals_holder(root)) if is_func else weakref.ref(root),
        code=weakref.ref(root.__code__) if is_func else None,
        defaults=tuple(map(_fingerprint, root.__defaults__ or ())) if is_func else (),
        kwdefaults=tuple((k, _fingerprint(v)) for k, v in (root.__kwdefaults__ or {}).items())
        if is_func else (),
        cells=tuple(_fingerprint(_cell(c)) for c in root.__closure__ or ()) if is_func else (),
        bindings=tuple(seen.values()),
        requirements=requirements,
        spec=spec,
        uses=uses,
        local_files=tuple(files.items()),
        checked=time.monotonic(),
    )


class _Strong:
    """A strong reference to a module-level object (its module keeps it alive anyway)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _fingerprint(value: Any) -> Any:
    """How a memo entry recognises a value again without keeping it alive."""
    try:
        return weakref.ref(value)
    except TypeError:
        pass
    if type(value) not in ATOMIC and _module_level(value):
        return _Strong(value)
    return type(value)


def _module_level(value: Any) -> bool:
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    name = getattr(value, "__name__", None)
    return module is not None and isinstance(name, str) and vars(module).get(name) is value


def _matches(fp: Any, value: Any) -> bool:
    kind = type(fp)
    if kind is weakref.ReferenceType:
        return fp() is value
    if kind is _Strong:
        return fp.value is value
    return type(value) is fp


def _matches_strict(fp: Any, value: Any, by_type: Callable[[type], bool]) -> bool:
    """Like _matches, but a value known only by its type must be one whose type says all."""
    kind = type(fp)
    if kind is weakref.ReferenceType:
        return fp() is value
    if kind is _Strong:
        return fp.value is value
    return type(value) is fp and (fp in ATOMIC or by_type(fp))


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def still_valid(entry: MemoEntry, root: Any, by_type: Callable[[type], bool] | None = None) -> bool:
    """Whether ``entry`` still describes ``root``.

    With ``by_type``, ``root`` is another function object: values not weak-referenceable must
    be atomic or of a type for which ``by_type`` says the type alone decides what is needed.
    """
    if entry.code is not None:
        match = _matches if by_type is None else functools.partial(
            _matches_strict, by_type=by_type)
        if root.__code__ is not entry.code():
            return False
        defaults = root.__defaults__ or ()
        if len(defaults) != len(entry.defaults) or not all(
                map(match, entry.defaults, defaults)):
            return False
        kw = root.__kwdefaults__ or {}
        if len(kw) != len(entry.kwdefaults) or not all(
                match(fp, kw.get(k, _MISSING)) for k, fp in entry.kwdefaults):
            return False
        cells = root.__closure__ or ()
        if len(cells) != len(entry.cells):
            return False
        for fp, cell in zip(entry.cells, cells):
            if not match(fp, _cell(cell)):
                return False
    for holder_ref, name, fp in entry.bindings:
        holder = holder_ref()
        if holder is None or not _matches(fp, globals_of(holder).get(name, _MISSING)):
            return False
    return True


def local_fresh(entry: MemoEntry, recheck: bool = False) -> bool:
    """Whether the local files of ``entry`` are as analysed.

    They are looked at once per ``LOCAL_RECHECK_SECONDS`` (every time with ``recheck``).
    """
    if not entry.local_files:
        return True
    if entry.stale:
        return False
    now = time.monotonic()
    if not recheck and now - entry.checked < LOCAL_RECHECK_SECONDS:
        return True
    for path, signature in entry.local_files:
        try:
            current = code_signature(Path(path))
        except OSError:  # gone or unreadable: analyse again, which says what is wrong
            current = None
        if current != signature:
            entry.stale = True
            return False
    entry.checked = now
    return True


def globals_holder(func: types.FunctionType) -> Any:
    """The module whose namespace is ``func.__globals__`` (it outlives the function), or func."""
    module = sys.modules.get(func.__globals__.get("__name__", ""))
    if module is not None and getattr(module, "__dict__", None) is func.__globals__:
        return module
    return func


def globals_of(holder: Any) -> dict[str, Any]:
    """The globals dict of a holder from :func:`globals_holder`."""
    if isinstance(holder, types.ModuleType):
        return vars(holder)
    return holder.__globals__
