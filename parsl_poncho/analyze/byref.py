"""What importing an installed module on a worker pulls in: its top-level imports, by distribution.

A function or class pickled *by reference* is imported on the worker, and with it its module,
whose top-level imports then run. An installed module may import distributions its owner does
not declare (``parsl.tests.*`` imports pytest; parsl does not require it), so pinning the owner
and its declared dependencies is not enough. :class:`ImportScanner` reads those imports:

- from the module's code object (``loader.get_code``, never executing it): the ``import``
  statements and literal ``importlib.import_module`` calls of its body, leaving out those under
  ``if TYPE_CHECKING:``;
- from the live module object when it is loaded: the modules its globals hold and the modules
  that define the functions, classes and instances its globals hold.

It follows the owner's own modules that the scanned ones import, within the home's subpackage
(``parsl.tests`` for ``parsl.tests.test_x``), to a bounded depth and count; it never scans a
distribution's top-level package unless asked about it, so ``import parsl`` does not drag in all
of parsl. Each module found that belongs to another distribution not among the owner's declared
dependencies (or to local code) is reported, marked optional: a module not installed here was
imported inside a branch not taken, and must not fail the analysis.
"""

from __future__ import annotations

import bisect
import dis
import importlib.machinery
import importlib.util
import itertools
import opcode
import sys
import types
from collections import deque
from dataclasses import replace
from typing import Any, Callable

from parsl_poncho.analyze.bytecode import Import, guarded_ranges
from parsl_poncho.analyze.classify import Classifier, normalize_name
from parsl_poncho.analyze.dynamic import literal_imports
from parsl_poncho.analyze.modules import SKIP_MODULE_ATTRS, ModuleUse

MAX_DEPTH = 3  # owner's modules followed from a home module, in import steps
MAX_MODULES = 32  # modules scanned per home module
_MAX_GLOBALS = 5000  # globals looked at per module
_JUMP_IF_FALSE = ("POP_JUMP_IF_FALSE", "POP_JUMP_FORWARD_IF_FALSE", "JUMP_IF_FALSE_OR_POP")
_LOADS = frozenset({"LOAD_NAME", "LOAD_GLOBAL", "LOAD_ATTR", "LOAD_METHOD"})
_IMPORT_NAME = opcode.opmap["IMPORT_NAME"]
_LOAD_CONST = opcode.opmap["LOAD_CONST"]
_LOAD_SMALL_INT = opcode.opmap.get("LOAD_SMALL_INT", -1)
_EXTENDED_ARG = opcode.EXTENDED_ARG

#: ``provider(module)``: the distribution providing ``module`` (``local:<name>`` for local
#: code), or None for the standard library and modules nothing here provides.
Provider = Callable[[str], "str | None"]


class ImportScanner:
    """Finds the distributions installed modules import at top level; results are cached.

    :param classifier: says which modules are stdlib and what distributions declare.
    :param provider: see :data:`Provider`.
    """

    def __init__(self, classifier: Classifier, provider: Provider) -> None:
        self.classifier = classifier
        self._provider = provider
        self._cache: dict[str, dict[str, ModuleUse]] = {}
        self._declared: dict[str, frozenset[str]] = {}

    def imports_of(self, module: str, owner: str) -> dict[str, ModuleUse]:
        """Modules of other distributions (or local code) importing ``module`` imports.

        ``owner`` is the distribution providing ``module``; what it declares (transitively,
        without extras) is left out, since pinning the owner covers it.
        """
        cached = self._cache.get(module)
        if cached is None:
            cached = self._cache[module] = self._scan(module, owner)
        return cached

    def _scan(self, home: str, owner: str) -> dict[str, ModuleUse]:
        declared = self._declared_by(owner)
        parts = home.split(".")
        subtree = ".".join(parts[:2]) if len(parts) > 1 else None
        # importing the home imports its parents too; the top-level package is the owner's
        start = [".".join(parts[:i]) for i in range(2, len(parts) + 1)] or [home]
        queue = deque((name, 0) for name in start)
        seen = set(start)
        out: dict[str, ModuleUse] = {}
        scanned = 0
        while queue and scanned < MAX_MODULES:
            name, depth = queue.popleft()
            scanned += 1
            for found, use in module_imports(name).items():
                if found in seen or found in out or self.classifier.is_stdlib(found):
                    continue
                provider = self._provider(found)
                if provider is None:
                    continue
                if provider == owner:
                    if subtree is not None and depth < MAX_DEPTH and _followed(found, subtree):
                        seen.add(found)
                        queue.append((found, depth + 1))
                elif normalize_name(provider) not in declared:
                    out[found] = use
        return out

    def _declared_by(self, owner: str) -> frozenset[str]:
        """Normalised names of ``owner`` and every distribution it requires, transitively."""
        cached = self._declared.get(owner)
        if cached is not None:
            return cached
        closure: set[str] = set()
        pending = [owner]
        while pending:
            name = pending.pop()
            key = normalize_name(name)
            if key in closure:
                continue
            closure.add(key)
            pending.extend(dep for dep, _extras in self.classifier.dependencies(name))
        self._declared[owner] = frozenset(closure)
        return self._declared[owner]


def _followed(module: str, subtree: str) -> bool:
    """Whether to scan the owner's ``module`` too: in ``subtree`` and not private.

    Private modules (``scipy.stats._stats_py``) are the package's implementation, imported by
    its public modules and declared for by its metadata like them.
    """
    if not (module == subtree or module.startswith(subtree + ".")):
        return False
    return not any(part.startswith("_") for part in module[len(subtree):].split("."))


def module_imports(name: str) -> dict[str, ModuleUse]:
    """Modules importing module ``name`` imports at top level (stdlib included), all optional.

    Read from its code (found without importing anything when it is not loaded) and from the
    globals of the loaded module. Imports inside ``try`` blocks (``try: import pandas except
    ImportError: pandas = None``) are left out, and so are the globals they bind: the module
    does without them.
    """
    loaded = sys.modules.get(name)
    module = loaded if isinstance(loaded, types.ModuleType) else None
    found, guarded = _code_imports(name, module)
    if module is not None:
        for target, use in _global_imports(module).items():
            if target.partition(".")[0] not in guarded:
                found.setdefault(target, use)
    return found


def _global_imports(module: types.ModuleType) -> dict[str, ModuleUse]:
    """The modules behind the globals of a loaded module (other than the module itself)."""
    name = module.__name__
    found: dict[str, ModuleUse] = {}
    try:
        items = list(itertools.islice(vars(module).items(), _MAX_GLOBALS))
    except Exception:  # noqa: BLE001 - an odd module object: nothing to learn from it
        return found
    rejected = {name}
    for attr, value in items:
        if attr in SKIP_MODULE_ATTRS or attr == "__builtins__" or not attr.isidentifier():
            continue  # (not an identifier: no import binds it, e.g. pytest's "@pytest_ar")
        target = _defining_module(value)
        if target is None or target in rejected or target in found:
            continue
        if isinstance(value, types.ModuleType) and target.startswith(name + "."):
            continue  # a submodule: set here when anything imported it (the code says if this did)
        if not _has_file(target):
            rejected.add(target)
            continue
        found[target] = ModuleUse(target, f"module {name}, global {attr!r}", optional=True)
    return found


def _defining_module(value: Any) -> str | None:
    """The module a global value comes from: a module's name, or its (or its type's) module."""
    try:
        if isinstance(value, types.ModuleType):
            found = value.__name__
        elif isinstance(value, (types.FunctionType, type, types.BuiltinFunctionType)):
            found = value.__module__
        else:
            found = type(value).__module__
    except Exception:  # noqa: BLE001 - hostile attribute access: nothing to learn
        return None
    return found if isinstance(found, str) else None


def _has_file(name: str) -> bool:
    """A loaded module with files: builtins and synthetic modules (Cython's ``_cython_3_x``)
    have none, and nothing to install."""
    module = sys.modules.get(name)
    return module is not None and bool(
        getattr(module, "__file__", None) or getattr(module, "__path__", None))


def _code_imports(name: str, module: types.ModuleType | None
                  ) -> tuple[dict[str, ModuleUse], set[str]]:
    """(modules the top-level code of module ``name`` imports outside ``try`` blocks, top-level
    names imported only inside them), read from its code object."""
    spec = getattr(module, "__spec__", None) if module is not None else find_spec_quietly(name)
    code = _get_code(spec, name)
    if code is None:
        return {}, set()
    is_package = spec is not None and spec.submodule_search_locations is not None
    package = getattr(module, "__package__", None) or (
        name if is_package else name.rpartition(".")[0])
    skip = _type_checking_ranges(code) if "TYPE_CHECKING" in code.co_names else []
    found: dict[str, ModuleUse] = {}
    guarded: set[str] = set()
    for imp in _top_level_imports(code):
        if any(start <= imp.offset < end for start, end in skip):
            continue
        targets = _imported_names(imp, package)
        if imp.guarded:
            guarded.update(target.partition(".")[0] for target in targets)
            continue
        where = f"module {name} ({code.co_filename}:{imp.line})"
        for target in targets:
            found.setdefault(target, ModuleUse(target, where, optional=True))
    return found, guarded - {target.partition(".")[0] for target in found}


def _get_code(spec: Any, name: str) -> types.CodeType | None:
    get_code = getattr(getattr(spec, "loader", None), "get_code", None)
    origin = getattr(spec, "origin", None)
    if get_code is None and isinstance(origin, str) and origin.endswith(".py"):
        # a loader that cannot say (pytest's assertion rewriter): read the source file
        get_code = importlib.machinery.SourceFileLoader(name, origin).get_code
    if get_code is None:
        return None
    try:
        code = get_code(name)
    except Exception:  # noqa: BLE001 - no source, a stale .pyc, a loader that cannot say
        return None
    return code if isinstance(code, types.CodeType) else None


def _imported_names(imp: Import, package: str | None) -> list[str]:
    """Absolute names one import statement imports (``from pkg import sub``: pkg and pkg.sub)."""
    name = imp.module
    if imp.level:
        parts = package.split(".") if package else []
        if imp.level > len(parts):
            return []
        base = ".".join(parts[:len(parts) - imp.level + 1])
        name = f"{base}.{name}" if name else base
    names = [name]
    for item in imp.fromlist:
        sub = f"{name}.{item}"
        if item != "*" and (sub in sys.modules or (
                name not in sys.modules and find_spec_quietly(sub) is not None)):
            names.append(sub)
    return names


def _top_level_imports(code: types.CodeType) -> list[Import]:
    """The import statements and literal dynamic imports of ``code`` (not of nested code).

    Reads the raw bytecode (several times faster than ``dis`` on large ``__init__`` modules).
    """
    raw = code.co_code
    consts: list[Any] = [None, None]
    found: list[Import] = []
    ext = 0
    for offset in range(0, len(raw), 2):
        op, arg = raw[offset], raw[offset + 1] | ext
        if op == _EXTENDED_ARG:
            ext = arg << 8
            continue
        ext = 0
        if op == _LOAD_CONST:
            consts = [consts[1], code.co_consts[arg]]
        elif op == _LOAD_SMALL_INT:
            consts = [consts[1], arg]
        elif op == _IMPORT_NAME:
            level = consts[0] if isinstance(consts[0], int) else 0
            fromlist = tuple(consts[1]) if isinstance(consts[1], tuple) else ()
            found.append(Import(code.co_names[arg], level, fromlist, None, False, offset))
    if found:
        lines = _lines_of(code, [imp.offset for imp in found])
        ranges = guarded_ranges(code)
        found = [replace(imp, line=lines.get(imp.offset), guarded=any(
            start <= imp.offset < end for start, end in ranges)) for imp in found]
    dynamic = literal_imports(code)
    if dynamic:
        ranges = guarded_ranges(code)
        found.extend(Import(lit.module, lit.level, (), lit.line, any(
            start <= lit.offset < end for start, end in ranges), lit.offset, dynamic=True)
            for lit in dynamic)
    return found


def _lines_of(code: types.CodeType, offsets: list[int]) -> dict[int, int | None]:
    """Source line of each instruction offset in ``offsets``."""
    starts = [(start, line) for start, line in dis.findlinestarts(code) if line is not None]
    keys = [start for start, _line in starts]
    out: dict[int, int | None] = {}
    for offset in offsets:
        n = bisect.bisect_right(keys, offset) - 1
        out[offset] = starts[n][1] if n >= 0 else None
    return out


def _type_checking_ranges(code: types.CodeType) -> list[tuple[int, int]]:
    """Offsets of the bodies of ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    ranges = []
    instructions = list(dis.get_instructions(code))
    for ins, after in zip(instructions, instructions[1:]):
        if ins.opname in _LOADS and ins.argval == "TYPE_CHECKING" and (
                after.opname in _JUMP_IF_FALSE and isinstance(after.argval, int)):
            ranges.append((after.offset, after.argval))
    return ranges


def find_spec_quietly(name: str) -> Any | None:
    """The import spec of module ``name`` without importing it or its parent packages."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__spec__", None)
    parent, _, _ = name.rpartition(".")
    try:
        if not parent:
            return importlib.util.find_spec(name)
        parent_spec = find_spec_quietly(parent)
        locations = getattr(parent_spec, "submodule_search_locations", None)
        if not locations:
            return None
        return importlib.machinery.PathFinder.find_spec(name, list(locations))
    except Exception:  # noqa: BLE001 - finders can fail many ways (KeyError for a namespace
        return None  # package whose parent is not loaded): then it cannot be found quietly
