"""What a code object imports and reads from its globals, read from its bytecode.

:func:`code_info` scans a code object and every code object nested in it (functions, lambdas,
comprehensions, class bodies) for ``import`` statements, literal ``importlib.import_module`` /
``__import__`` calls (dynamic.py), and the global names it reads with the attribute chains on
them; an import inside a ``try`` block is *guarded* (optional). The rest reads a source file's
code without running it: :func:`compile_file`, :func:`static_bindings`, :func:`find_code`.
"""

from __future__ import annotations

import dis
import sys
import types
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

from parsl_poncho.analyze.dynamic import literal_imports, may_import_dynamically


@dataclass(frozen=True)
class Import:
    """One import a code object makes (``level`` > 0: relative; ``guarded``: inside a try)."""

    module: str
    level: int
    fromlist: tuple[str, ...]
    line: int | None
    guarded: bool
    offset: int = -1  # of the instruction in its code object
    dynamic: bool = False  # importlib.import_module("x") or __import__("x")


@dataclass(frozen=True)
class CodeInfo:
    """What one code object (and the code nested in it) imports and reads from its globals."""

    imports: tuple[Import, ...]
    globals_read: tuple[tuple[str, tuple[str, ...], int | None], ...]  # (name, attrs, line)
    filename: str
    qualname: str


_code_cache: weakref.WeakKeyDictionary[types.CodeType, CodeInfo] = weakref.WeakKeyDictionary()
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_CONST_OPS = frozenset({"LOAD_CONST", "LOAD_SMALL_INT"})


def code_info(code: types.CodeType) -> CodeInfo:
    """Imports and global reads of ``code`` and every code object nested in it (memoised)."""
    info = _code_cache.get(code)
    if info is None:
        imports: list[Import] = []
        reads: list[tuple[str, tuple[str, ...], int | None]] = []
        for one in iter_code(code):
            scan_code(one, imports, reads)
        info = CodeInfo(tuple(imports), tuple(reads), code.co_filename,
                        getattr(code, "co_qualname", code.co_name))
        _code_cache[code] = info
    return info


def iter_code(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in it."""
    stack = [code]
    while stack:
        one = stack.pop()
        yield one
        stack.extend(c for c in one.co_consts if isinstance(c, types.CodeType))


def guarded_ranges(code: types.CodeType) -> list[tuple[int, int]]:
    """The bytecode offset ranges of ``code`` that a try block covers."""
    if sys.version_info >= (3, 11):
        return [(e.start, e.end) for e in dis.Bytecode(code).exception_entries]
    return [(i.offset, i.argval) for i in dis.get_instructions(code)  # pragma: no cover
            if i.opname in ("SETUP_FINALLY", "SETUP_EXCEPT")]


def scan_code(code: types.CodeType, imports: list[Import], reads: list) -> None:
    """Append the imports and global reads of ``code`` itself (not nested code) to the lists."""
    guarded = None
    consts: list[Any] = [None, None]
    chain: list[str] | None = None
    chain_line: int | None = None
    line: int | None = code.co_firstlineno
    for ins in dis.get_instructions(code):
        pos = getattr(ins, "positions", None)
        if pos is not None and pos.lineno is not None:
            line = pos.lineno
        elif isinstance(ins.starts_line, int) and not isinstance(ins.starts_line, bool):
            line = ins.starts_line  # pragma: no cover (Python < 3.11)
        op = ins.opname
        if chain is not None and op in _ATTR_OPS:
            chain.append(ins.argval)
            continue
        if chain is not None:
            reads.append((chain[0], tuple(chain[1:]), chain_line))
            chain = None
        if op in _GLOBAL_OPS:
            chain, chain_line = [ins.argval], line
        elif op in _CONST_OPS:
            consts = [consts[1], ins.argval]
        elif op == "IMPORT_NAME":
            if guarded is None:
                guarded = guarded_ranges(code)
            level = consts[0] if isinstance(consts[0], int) else 0
            fromlist = tuple(consts[1]) if isinstance(consts[1], tuple) else ()
            is_guarded = any(start <= ins.offset < end for start, end in guarded)
            imports.append(Import(ins.argval, level, fromlist, line, is_guarded, ins.offset))
    if chain is not None:
        reads.append((chain[0], tuple(chain[1:]), chain_line))
    if may_import_dynamically(code):
        if guarded is None:
            guarded = guarded_ranges(code)
        for lit in literal_imports(code):
            is_guarded = any(start <= lit.offset < end for start, end in guarded)
            imports.append(Import(lit.module, lit.level, (), lit.line, is_guarded, lit.offset,
                                   dynamic=True))


def compile_file(path: str) -> types.CodeType:
    """The module code object of a Python source file (``-`` reads stdin)."""
    if path == "-":
        source, filename = sys.stdin.read(), "<stdin>"
    else:
        with open(path, "rb") as fh:
            source, filename = fh.read(), path
    return compile(source, filename, "exec", dont_inherit=True)


def static_bindings(code: types.CodeType) -> dict[str, str | types.CodeType]:
    """Top-level names of a module code object: imported module names and defined code."""
    bindings: dict[str, str | types.CodeType] = {}
    module: str | None = None
    attr: str | None = None
    last_code: types.CodeType | None = None
    for ins in dis.get_instructions(code):
        op = ins.opname
        if op == "IMPORT_NAME":
            module, attr = ins.argval, None
        elif op == "IMPORT_FROM" and module is not None:
            attr = ins.argval
        elif op == "LOAD_CONST" and isinstance(ins.argval, types.CodeType):
            last_code = ins.argval
        elif op == "STORE_NAME":
            if module is not None and attr is not None:
                bindings[ins.argval] = module  # from MODULE import attr / import MODULE as x
            elif module is not None:
                bindings[ins.argval] = module.split(".")[0]
                module = None
            elif last_code is not None:
                bindings[ins.argval] = last_code
                last_code = None
        elif op == "POP_TOP" and attr is not None:
            module, attr = None, None
    return bindings


def find_code(code: types.CodeType, name: str) -> bool:
    """Whether a function or class called ``name`` is defined anywhere in ``code``."""
    return any(c.co_name == name for c in iter_code(code))
