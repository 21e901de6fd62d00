"""Find the modules a callable needs on the far side of cloudpickle, by walking its bytecode.

The walk mirrors what cloudpickle ships: a function or class that cloudpickle pickles *by
reference* (importable from a module other than ``__main__``, not registered by value) only
needs its module; one pickled *by value* (defined in ``__main__``, in a function, or in a module
registered with ``cloudpickle.register_pickle_by_value``) is walked: import statements anywhere in
its code (nested functions, lambdas, comprehensions, class bodies), the globals it reads and the
attribute chains on them, closure cells, defaults, annotations and ``__dict__`` (``__wrapped__``),
and every helper function or class it reaches, transitively and once each. Bound methods,
``functools.partial`` objects, callable instances, containers and argument values are walked as
cloudpickle would pickle them.
"""

from __future__ import annotations

import functools
import sys
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from parsl_poncho.analyze.bytecode import (
    Import,
    code_info,
    compile_file,
    iter_code,
    scan_code,
    static_bindings,
)

# Values whose type alone says they need nothing beyond the interpreter.
ATOMIC = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), type(...), range, slice,
     type(NotImplemented)}
)
_CONTAINERS = (list, tuple, set, frozenset)
_BUILTIN_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})
_MAX_ITEMS = 200  # items walked per container: enough to see the types, bounded for huge args
_MAX_OBJECTS = 5000  # objects walked per analysis
_SKIP_CLASS_ATTRS = frozenset({"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"})
SKIP_MODULE_ATTRS = frozenset(
    {"__builtins__", "__loader__", "__spec__", "__file__", "__cached__", "__name__", "__doc__",
     "__package__", "__path__", "__annotations__"}
)


@dataclass(frozen=True)
class ModuleUse:
    """Where a module is first needed: ``where`` reads ``qualname (file:line)`` or similar."""

    module: str
    where: str
    optional: bool = False  # inside a try block, or in a local module's function body


# -- cloudpickle's by-reference rule -----------------------------------------------------------
def _by_value_modules() -> frozenset[str]:
    try:
        import cloudpickle

        return frozenset(cloudpickle.list_registry_pickle_by_value())
    except (ImportError, AttributeError):  # pragma: no cover
        return frozenset()


def _registered_by_value(name: str, registry: frozenset[str]) -> bool:
    while True:
        if name in registry:
            return True
        if "." not in name:
            return False
        name = name.rsplit(".", 1)[0]


def pickled_by_reference(obj: Any, registry: frozenset[str] | None = None) -> bool:
    """Whether cloudpickle pickles the function, class or module ``obj`` by reference."""
    if registry is None:
        registry = _by_value_modules()
    if isinstance(obj, types.ModuleType):
        return obj.__name__ in sys.modules and not _registered_by_value(obj.__name__, registry)
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or module_name in ("__main__", "__mp_main__") or not qualname:
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, _MISSING) if part != "<locals>" else _MISSING
        if found is _MISSING:
            return False
    return found is obj and not _registered_by_value(module_name, registry)


_MISSING = object()


# -- parsl wrappers ----------------------------------------------------------------------------
_parsl_wrapper_code: dict[int, tuple[Any, types.CodeType | None]] = {}


def _parsl_wrap_error_code() -> types.CodeType | None:
    module = sys.modules.get("parsl.app.errors")
    if module is None:
        return None
    cached = _parsl_wrapper_code.get(id(module))
    if cached is not None and cached[0] is module:
        return cached[1]
    factory = getattr(module, "wrap_error", None)
    code = None
    for const in getattr(getattr(factory, "__code__", None), "co_consts", ()):
        if isinstance(const, types.CodeType) and const.co_name == "wrapper":
            code = const
    _parsl_wrapper_code[id(module)] = (module, code)
    return code


def strip_parsl_wrapper(func: Callable[..., Any]) -> Callable[..., Any]:
    """The callable inside Parsl's ``wrap_error`` wrapper, or ``func`` itself.

    Parsl hands executors ``parsl.app.errors.wrap_error(app_function)``, whose body imports
    parsl to box exceptions into ``RemoteExceptionWrapper``. PonchoExecutor ships the inner
    callable and reports exceptions itself, so the environment needs parsl only when the inner
    callable does (a ``bash_app``'s ``partial(remote_side_bash_executor, ...)`` does).
    """
    code = _parsl_wrap_error_code()
    while (
        code is not None
        and isinstance(func, types.FunctionType)
        and func.__code__ is code
        and hasattr(func, "__wrapped__")
    ):
        func = func.__wrapped__
    return func


# -- the walk ----------------------------------------------------------------------------------
class ModuleFinder:
    """Collects the modules needed to unpickle and run the objects given to :meth:`walk`.

    ``opaque(module_name)`` says that instances of classes from that module need nothing beyond
    it (a distribution's classes: its own dependencies cover their state), so their attributes
    are not walked. ``bindings`` records the global bindings read by by-value functions, for the
    caller's memo checks: (function, name, value).
    """

    def __init__(self, opaque: Callable[[str], bool] | None = None) -> None:
        self.modules: dict[str, ModuleUse] = {}
        self.bindings: list[tuple[types.FunctionType, str, Any]] = []
        self.by_value_functions: list[types.FunctionType] = []
        self._opaque = opaque or (lambda name: False)
        self._registry = _by_value_modules()
        self._seen: set[int] = set()
        self._keep: list[Any] = []  # keeps walked objects alive so ids stay unique
        self._count = 0

    # public -----------------------------------------------------------------------------------
    def walk(self, obj: Any, where: str) -> None:
        """Record what ``obj`` needs; ``where`` describes it for error messages."""
        t = type(obj)
        if t in ATOMIC:
            return
        key = id(obj)
        if key in self._seen or self._count > _MAX_OBJECTS:
            return
        self._seen.add(key)
        self._keep.append(obj)
        self._count += 1
        try:
            self._dispatch(obj, t, where)
        except Exception:  # noqa: BLE001 - a hostile object (__getattribute__ raising...):
            try:  # its class is all that can be known
                self._class(t, where)
            except Exception:  # noqa: BLE001
                return

    def scan_module(self, module: types.ModuleType) -> None:
        """Record what importing ``module`` (a local module shipped by reference) needs.

        Its global values are walked, and the bodies of the functions and classes it defines,
        whose imports are marked optional (they run only if called).
        """
        name = module.__name__
        where = f"module {name} ({getattr(module, '__file__', None) or '?'})"
        for attr, value in list(vars(module).items()):
            if attr in SKIP_MODULE_ATTRS:
                continue
            if isinstance(value, (types.FunctionType, type)) and getattr(
                value, "__module__", None) == name:
                self._walk_defined(value, name)
            else:
                self.walk(value, f"{where}, global {attr!r}")

    def add(self, module: str, where: str, optional: bool = False) -> None:
        """Record that ``module`` is needed (first use wins; a required use beats optional)."""
        if not module or module in ("__main__", "__mp_main__", "builtins"):
            return
        known = self.modules.get(module)
        if known is None or (known.optional and not optional):
            self.modules[module] = ModuleUse(module, where, optional)

    # objects ----------------------------------------------------------------------------------
    def _dispatch(self, obj: Any, t: type, where: str) -> None:
        if isinstance(obj, types.FunctionType):
            self._function(obj, where)
        elif isinstance(obj, type):
            self._class(obj, where)
        elif isinstance(obj, types.ModuleType):
            self._module(obj, where)
        elif isinstance(obj, types.MethodType):
            self.walk(obj.__func__, where)
            self.walk(obj.__self__, f"{where}, bound to {type(obj.__self__).__qualname__}")
        elif isinstance(obj, functools.partial):
            self.walk(obj.func, where)
            self._walk_items(obj.args, f"{where}, partial argument")
            self._walk_items(obj.keywords.values(), f"{where}, partial keyword")
        elif isinstance(obj, (staticmethod, classmethod)):
            self.walk(obj.__func__, where)
        elif isinstance(obj, property):
            self._walk_items((obj.fget, obj.fset, obj.fdel), where)
        elif isinstance(obj, (types.BuiltinFunctionType, types.MethodWrapperType)):
            self._builtin(obj, where)
        elif isinstance(obj, _CONTAINERS):
            self._container_type(t, where)
            self._walk_items(obj, where)
        elif isinstance(obj, dict):
            self._container_type(t, where)
            self._walk_items(obj.keys(), where)
            self._walk_items(obj.values(), where)
        elif isinstance(obj, (types.CodeType, weakref.ref)):
            return
        else:
            self._instance(obj, t, where)

    def _container_type(self, t: type, where: str) -> None:
        """A subclass of a builtin container (a namedtuple, a dict subclass) needs its class."""
        if t not in _BUILTIN_CONTAINERS:
            self.walk(t, where)

    def _walk_items(self, items: Iterable[Any], where: str) -> None:
        for n, item in enumerate(items):
            if n >= _MAX_ITEMS:
                break
            self.walk(item, where)

    def _builtin(self, obj: Any, where: str) -> None:
        module = getattr(obj, "__module__", None)
        owner = getattr(obj, "__self__", None)
        if module:
            self.add(module, where)
        elif owner is not None and not isinstance(owner, types.ModuleType):
            self.walk(owner, where)
        elif isinstance(owner, types.ModuleType):
            self._module(owner, where)

    def _module(self, module: types.ModuleType, where: str) -> None:
        if pickled_by_reference(module, self._registry):
            self.add(module.__name__, where)
        else:  # a dynamic module or one registered by value: its namespace travels with it
            for attr, value in list(vars(module).items()):
                if attr not in SKIP_MODULE_ATTRS:
                    self.walk(value, f"{where}, {module.__name__}.{attr}")

    def _instance(self, obj: Any, t: type, where: str) -> None:
        # An instance is rebuilt through its class (or its __reduce__ names a global): a class
        # of an importable module needs that module, even when not reachable by its qualname
        # (C types such as numpy's _ArrayFunctionDispatcher).
        module_name = getattr(t, "__module__", None)
        if (isinstance(module_name, str) and module_name in sys.modules
                and module_name not in ("__main__", "__mp_main__")
                and "<locals>" not in t.__qualname__
                and not _registered_by_value(module_name, self._registry)):
            self.add(module_name, where)
        else:
            self.walk(t, where)
        try:  # objects pickled by name (numpy ufuncs, enum-like singletons) name their module
            module = obj.__module__
        except Exception:  # noqa: BLE001 - arbitrary __getattr__: nothing to learn
            module = None
        try:
            named = isinstance(getattr(obj, "__name__", None), str)
        except Exception:  # noqa: BLE001
            named = False
        if isinstance(module, str) and module != getattr(t, "__module__", None):
            self.add(module, where)
        elif module is None and named:
            found = _which_module(obj)  # pickled by name, found by scanning (numpy ufuncs)
            if found:
                self.add(found, where)
        if self._opaque(getattr(t, "__module__", "") or ""):
            return
        try:
            state = obj.__dict__
        except Exception:  # noqa: BLE001 - no instance dict, or a hostile __getattribute__
            state = None
        if isinstance(state, dict):
            self._walk_items(state.values(), f"{where}, attribute of {t.__qualname__}")
        slots = getattr(t, "__slots__", ())
        for slot in slots if isinstance(slots, (tuple, list)) else ():
            try:
                value = getattr(obj, slot, None)
            except Exception:  # noqa: BLE001 - a slot property that raises: nothing to learn
                continue
            self.walk(value, f"{where}, attribute of {t.__qualname__}")

    def _class(self, cls: type, where: str) -> None:
        if cls.__module__ == "builtins":
            return
        if pickled_by_reference(cls, self._registry):
            self.add(cls.__module__, where)
            return
        self.walk(type(cls), where)
        where = f"class {cls.__qualname__}"
        self._walk_items(cls.__bases__, where)
        for attr, value in list(vars(cls).items()):
            if attr not in _SKIP_CLASS_ATTRS:
                self.walk(value, f"{where}.{attr}")

    def _walk_defined(self, obj: Any, module_name: str) -> None:
        """A function or class of a scanned local module: walk its body, imports optional."""
        if id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        self._keep.append(obj)
        if isinstance(obj, types.FunctionType):
            self._function_body(obj, optional=True)
            return
        for attr, value in list(vars(obj).items()):
            if attr in _SKIP_CLASS_ATTRS:
                continue
            inner = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(inner, types.FunctionType) and inner.__module__ == module_name:
                self._walk_defined(inner, module_name)
            else:
                self.walk(value, f"class {obj.__qualname__}.{attr}")
        self._walk_items(obj.__bases__, f"class {obj.__qualname__}")

    def _function(self, func: types.FunctionType, where: str) -> None:
        if pickled_by_reference(func, self._registry):
            self.add(func.__module__, where)
            return
        self.by_value_functions.append(func)
        self._function_body(func, optional=False)

    def _function_body(self, func: types.FunctionType, optional: bool) -> None:
        info = code_info(func.__code__)
        qual = func.__qualname__
        here = f"{qual} ({info.filename}:{{}})"
        package = _package_of(func.__globals__)
        for imp in info.imports:
            self._import(imp, package, here.format(imp.line), optional)
        glob = func.__globals__
        for name, attrs, line in info.globals_read:
            value = glob.get(name, _MISSING)
            if value is _MISSING:
                continue  # a builtin, or a name bound later: nothing to ship
            self.bindings.append((func, name, value))
            self._global(value, attrs, here.format(line))
        if func.__closure__:
            for var, cell in zip(func.__code__.co_freevars, func.__closure__):
                try:
                    value = cell.cell_contents
                except ValueError:  # empty cell
                    continue
                self.walk(value, f"{qual} (closure variable {var!r})")
        self._walk_items(func.__defaults__ or (), f"{qual} (default argument)")
        self._walk_items((func.__kwdefaults__ or {}).values(), f"{qual} (default argument)")
        self._walk_items(func.__annotations__.values(), f"{qual} (annotation)")
        self._walk_items(func.__dict__.values(), f"{qual} (function attribute)")

    def _global(self, value: Any, attrs: tuple[str, ...], where: str) -> None:
        # Follow the attribute chain through submodules only (``scipy.linalg.norm`` needs
        # scipy.linalg): attributes of a module pickled by reference are looked up remotely,
        # not shipped. No getattr: lazy module __getattr__ hooks would import things.
        for attr in attrs:
            if not isinstance(value, types.ModuleType):
                break
            sub = sys.modules.get(f"{value.__name__}.{attr}")
            if not isinstance(sub, types.ModuleType) or vars(value).get(attr, sub) is not sub:
                break
            value = sub
        self.walk(value, where)

    def _import(self, imp: Import, package: str | None, where: str, optional: bool) -> None:
        name = imp.module
        if imp.level:
            base = package or ""
            parts = base.split(".") if base else []
            if imp.level - 1 > len(parts) or not base:
                rel = name or ",".join(imp.fromlist)
                self.add("." * imp.level + rel, where, optional or imp.guarded)
                return
            base = ".".join(parts[: len(parts) - (imp.level - 1)])
            name = f"{base}.{name}" if name else base
        optional = optional or imp.guarded
        recorded = False
        for item in imp.fromlist:
            sub = f"{name}.{item}"
            if item != "*" and sub in sys.modules:
                self.add(sub, where, optional)
                recorded = True
        if not recorded:
            self.add(name, where, optional)


def _which_module(obj: Any) -> str | None:
    """The module holding ``obj`` under its ``__name__``, as pickle.whichmodule finds it."""
    name = obj.__name__
    for module_name, module in list(sys.modules.items()):
        if module_name in ("__main__", "__mp_main__") or not isinstance(module, types.ModuleType):
            continue
        try:
            if vars(module).get(name) is obj:
                return module_name
        except Exception:  # noqa: BLE001 - odd objects in sys.modules: skip them
            continue
    return None


def _package_of(glob: dict[str, Any]) -> str | None:
    package = glob.get("__package__")
    if package:
        return str(package)
    name = glob.get("__name__")
    if isinstance(name, str) and "__path__" in glob:
        return name
    if isinstance(name, str) and "." in name:
        return name.rsplit(".", 1)[0]
    return None


def find_modules(func: Any, *args: Any, **kwargs: Any) -> dict[str, ModuleUse]:
    """The modules ``func`` called with ``args``/``kwargs`` needs (stdlib included).

    >>> import json
    >>> sorted(find_modules(lambda: json.dumps({})))
    ['json']
    """
    finder = ModuleFinder()
    finder.walk(func, describe(func))
    for n, arg in enumerate(args):
        finder.walk(arg, f"argument {n} of {describe(func)}")
    for key, arg in kwargs.items():
        finder.walk(arg, f"argument {key!r} of {describe(func)}")
    return finder.modules


def describe(obj: Any) -> str:
    """A short human name for a callable: ``module.qualname``."""
    target = obj
    if isinstance(obj, functools.partial):
        target = obj.func
    elif isinstance(obj, types.MethodType):
        target = obj.__func__
    elif not isinstance(obj, (types.FunctionType, type, types.BuiltinFunctionType)):
        target = type(obj)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', repr(target))}"


# -- static analysis of source files (scripts, local modules not imported here) ----------------
def static_module_uses(path: str, module_name: str, *, is_package: bool = False,
                       toplevel_only: bool = False) -> dict[str, ModuleUse]:
    """Modules imported by the source file ``path`` of module ``module_name``, without running it.

    Imports at the module's top level are required; those inside functions and classes are
    marked optional (they run only when called).
    """
    code = compile_file(path)
    package = module_name if is_package else (
        module_name.rsplit(".", 1)[0] if "." in module_name else None)
    finder = ModuleFinder()
    top: list[Import] = []
    scan_code(code, top, [])
    for imp in top:
        finder._import(imp, package, f"module {module_name} ({path}:{imp.line})", False)
    if not toplevel_only:
        for imp in code_info(code).imports:
            finder._import(imp, package, f"module {module_name} ({path}:{imp.line})", True)
    return finder.modules


def static_function_uses(code: types.CodeType, name: str) -> dict[str, ModuleUse]:
    """Modules a function defined in a script needs, found without running the script.

    The function's imports, and the module-level names it reads that are bound to imports or to
    other functions and classes of the script (followed transitively).
    """
    bindings = static_bindings(code)
    targets = [c for c in iter_code(code) if c.co_name == name]
    finder = ModuleFinder()
    seen: set[int] = set()
    while targets:
        target = targets.pop()
        if id(target) in seen:
            continue
        seen.add(id(target))
        info = code_info(target)
        where = f"{getattr(target, 'co_qualname', target.co_name)} ({target.co_filename}:{{}})"
        for imp in info.imports:
            finder._import(imp, None, where.format(imp.line), False)
        for gname, _attrs, line in info.globals_read:
            bound = bindings.get(gname)
            if isinstance(bound, str):
                finder.add(bound, where.format(line))
            elif isinstance(bound, types.CodeType):
                targets.append(bound)
    return finder.modules
