"""Find literal dynamic imports in one code object: ``import_module("x")`` and ``__import__("x")``.

Recognised calls, with constant string arguments:

- ``importlib.import_module("x")`` (any name bound to the ``importlib`` module before the
  attribute), ``import_module("x")`` after ``from importlib import import_module [as alias]``;
- ``import_module(".x", "pkg")``, also with ``package="pkg"`` (resolved to ``pkg.x``) and with
  ``__package__`` as the package (kept relative, resolved by the caller like ``from . import x``);
- ``__import__("x")`` and ``builtins.__import__("x", ...)`` (only the first argument counts).

Names computed at run time are not found; that is what run-time learning is for.
"""

from __future__ import annotations

import dis
import types
from dataclasses import dataclass

_IMPORT_MODULE = "import_module"
_DUNDER_IMPORT = "__import__"
_TRIGGERS = frozenset({_IMPORT_MODULE, _DUNDER_IMPORT})
_NAME_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF",
                       "LOAD_FAST_CHECK", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_GLOBALS"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_STORE_OPS = frozenset({"STORE_NAME", "STORE_GLOBAL", "STORE_FAST", "STORE_DEREF"})
_CONST_OPS = frozenset({"LOAD_CONST"})
_SKIP_OPS = frozenset({"PUSH_NULL", "PRECALL", "CACHE", "NOP", "EXTENDED_ARG"})


@dataclass(frozen=True)
class LiteralImport:
    """One dynamic import with a constant name: ``level`` > 0 is relative to ``__package__``."""

    module: str
    level: int
    line: int | None
    offset: int


def may_import_dynamically(code: types.CodeType) -> bool:
    """Cheap test: whether ``code`` names ``import_module`` or ``__import__`` at all."""
    return not (_TRIGGERS.isdisjoint(code.co_names) and _TRIGGERS.isdisjoint(code.co_varnames)
                and _TRIGGERS.isdisjoint(code.co_freevars))


def literal_imports(code: types.CodeType) -> list[LiteralImport]:
    """The literal dynamic imports in ``code`` itself (not in the code nested in it)."""
    if not may_import_dynamically(code):
        return []
    instructions = list(dis.get_instructions(code))
    callees = _callee_names(instructions)
    found: list[LiteralImport] = []
    line: int | None = code.co_firstlineno
    for n, ins in enumerate(instructions):
        line = _line(ins, line)
        kind = _callee(instructions, n, callees)
        if kind is None:
            continue
        args = _constant_args(instructions, n + 1)
        if not args or not isinstance(args[0], str) or not args[0].strip("."):
            continue
        one = _resolve(kind, args, line, ins.offset)
        if one is not None:
            found.append(one)
    return found


class _Package:
    """Marker for ``__package__`` passed as an argument."""


def _line(ins: dis.Instruction, line: int | None) -> int | None:
    pos = getattr(ins, "positions", None)
    if pos is not None and pos.lineno is not None:
        return int(pos.lineno)
    if isinstance(ins.starts_line, int) and not isinstance(ins.starts_line, bool):
        return ins.starts_line  # pragma: no cover (Python < 3.11)
    return line


def _callee_names(instructions: list[dis.Instruction]) -> dict[str, str]:
    """Names that mean ``import_module`` / ``__import__`` here (with ``from importlib`` aliases)."""
    names = {_IMPORT_MODULE: _IMPORT_MODULE, _DUNDER_IMPORT: _DUNDER_IMPORT}
    for n, ins in enumerate(instructions[:-1]):
        if ins.opname == "IMPORT_FROM" and ins.argval in _TRIGGERS:
            after = instructions[n + 1]
            if after.opname in _STORE_OPS:
                names[str(after.argval)] = str(ins.argval)
    return names


def _callee(instructions: list[dis.Instruction], n: int, callees: dict[str, str]) -> str | None:
    """``import_module`` or ``__import__`` if instruction ``n`` loads one of them, else None."""
    ins = instructions[n]
    if ins.opname in _NAME_OPS:
        kind = callees.get(str(ins.argval))
        after = instructions[n + 1].opname if n + 1 < len(instructions) else ""
        return None if after in _ATTR_OPS else kind  # ``import_module.x`` is no call of it
    if ins.opname in _ATTR_OPS and ins.argval in _TRIGGERS and n:
        before = instructions[n - 1]
        if before.opname in _NAME_OPS | _ATTR_OPS:
            return str(ins.argval)
    return None


def _constant_args(instructions: list[dis.Instruction], start: int) -> list[object]:
    """The leading constant (or ``__package__``) arguments loaded from ``start`` on."""
    args: list[object] = []
    for ins in instructions[start:start + 6]:
        op = ins.opname
        if op in _SKIP_OPS:
            continue
        if op in _CONST_OPS and isinstance(ins.argval, str):
            args.append(ins.argval)
        elif op in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval == "__package__":
            args.append(_Package)
        else:
            break
    return args


def _resolve(kind: str, args: list[object], line: int | None, offset: int
             ) -> LiteralImport | None:
    name = str(args[0])
    if kind == _DUNDER_IMPORT or not name.startswith("."):
        return None if name.startswith(".") else LiteralImport(name, 0, line, offset)
    level = len(name) - len(name.lstrip("."))
    rest = name[level:]
    package = args[1] if len(args) > 1 else None
    if package is _Package:
        return LiteralImport(rest, level, line, offset)
    if not isinstance(package, str) or not package:
        return None  # relative to a package computed at run time (or a TypeError there)
    parts = package.split(".")
    if level - 1 >= len(parts):
        return None
    base = ".".join(parts[:len(parts) - (level - 1)])
    return LiteralImport(f"{base}.{rest}", 0, line, offset)
