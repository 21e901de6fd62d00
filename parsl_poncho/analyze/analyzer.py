"""Analyzer: a callable and its arguments -> what they need -> a pinned Spec, memoised.

Results are memoised per callable (weakly: nothing is kept alive by the memo) and re-used while
its code object, defaults, closure cells and the global bindings its analysis read are the same
objects; a second analysis costs microseconds. A result that ships local code is also re-used only
while the stat signature of its files is the same, checked at most once per
:data:`_LOCAL_RECHECK_SECONDS`: an edited local module gets a new content hash, hence a new spec.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import threading
import time
import types
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from parsl_poncho.analyze.byref import ImportScanner
from parsl_poncho.analyze.classify import Classifier, Distribution, normalize_name
from parsl_poncho.analyze.modules import (
    _ATOMIC,
    ModuleFinder,
    ModuleUse,
    describe,
    pickled_by_reference,
    static_module_uses,
    strip_parsl_wrapper,
)
from parsl_poncho.analyze.pin import pin_spec
from parsl_poncho.codehash import Signature, code_signature
from parsl_poncho.errors import AnalysisError, AnalysisOptionError, UnresolvedImportError
from parsl_poncho.spec import LocalCode, Spec

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_MISSING = object()
_CONTAINER_TYPES = (list, tuple, set, frozenset, dict)
_CODE_ENTRIES = 8  # entries kept per code object for new function objects to reuse
#: A memo entry with local code re-checks its files' stat signatures at most this often (s).
_LOCAL_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Requirements:
    """What a callable needs remotely, before pinning.

    ``modules`` maps every non-stdlib module needed to its first use; ``providers`` maps each
    to the distribution name that provides it (``local:<name>`` for local code), for checking
    an environment by importing them.
    """

    function: str
    modules: Mapping[str, ModuleUse]
    providers: Mapping[str, str]
    distributions: tuple[Distribution, ...]
    local: tuple[LocalCode, ...]
    extra_requirements: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # optional imports not installed on this host


@dataclass
class _Entry:
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
    if type(value) not in _ATOMIC and _module_level(value):
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
    return type(value) is fp and (fp in _ATOMIC or by_type(fp))


class Analyzer:
    """Works out and pins what a function needs to run in a fresh environment.

    :param pkg_mapping: import name -> distribution that provides it (``{"cv2":
        "opencv-python"}``); the distribution must be installed here, or the value must be a
        requirement with a version (``"foo==1.2"``), passed through unchecked.
    :param extra_pkgs: distributions to add whatever the analysis finds (installed names are
        pinned with their dependencies; requirements with a version are passed through).
    :param ignore: modules (and their submodules) never to include.
    :param pin_transitive: also pin the installed dependencies of every distribution.
    :param channels: conda channels of the spec (default ``("conda-forge",)``); channels of
        conda-installed packages are appended.
    :param conda_prefix: the prefix whose ``conda-meta`` records classify modules (default
        ``sys.prefix``).
    :param strip_parsl: analyse the callable inside Parsl's ``wrap_error`` wrapper (see
        :func:`strip_parsl_wrapper`).
    :raises AnalysisOptionError: listing every invalid override.

    >>> import json
    >>> spec = Analyzer().analyze(lambda: json.dumps([]))
    >>> spec.conda[1]
    'pip'
    """

    def __init__(
        self,
        pkg_mapping: Mapping[str, str] | None = None,
        extra_pkgs: Iterable[str] = (),
        ignore: Iterable[str] = (),
        pin_transitive: bool = True,
        channels: Iterable[str] | None = None,
        *,
        conda_prefix: str | None = None,
        strip_parsl: bool = True,
        classifier: Classifier | None = None,
    ) -> None:
        self.classifier = classifier or Classifier(conda_prefix)
        self.pin_transitive = bool(pin_transitive)
        self.strip_parsl = strip_parsl
        problems: list[str] = []
        self.ignore = _check_names("ignore", ignore, problems)
        self.channels = None if channels is None else _check_names("channels", channels,
                                                                   problems, modules=False)
        self._mapping: dict[str, Distribution | str] = {}
        self._check_mapping(pkg_mapping, problems)
        self._extra: list[Distribution] = []
        self._extra_reqs: list[str] = []
        for name in _check_names("extra_pkgs", extra_pkgs, problems, modules=False):
            resolved = self._resolve_dist("extra_pkgs", name, name, problems)
            if isinstance(resolved, Distribution):
                self._extra.append(resolved)
            elif resolved is not None:
                self._extra_reqs.append(resolved)
        if problems:
            raise AnalysisOptionError(
                "Invalid analysis options:\n  " + "\n  ".join(problems), problems)
        self._memo: weakref.WeakKeyDictionary[Any, _Entry] = weakref.WeakKeyDictionary()
        self._by_code: weakref.WeakKeyDictionary[Any, list[_Entry]] = weakref.WeakKeyDictionary()
        self._type_uses: weakref.WeakKeyDictionary[type, dict[str, ModuleUse]] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.RLock()
        self._imports = ImportScanner(self.classifier, self._provider)

    # options ----------------------------------------------------------------------------------
    def _check_mapping(self, mapping: Any, problems: list[str]) -> None:
        if mapping is None:
            return
        if not isinstance(mapping, Mapping):
            problems.append(f"pkg_mapping must be a dict of import name -> distribution, got "
                            f"{type(mapping).__name__} {mapping!r}")
            return
        for key, value in mapping.items():
            if not isinstance(key, str) or not _MODULE_NAME.match(key):
                problems.append(f"pkg_mapping key {key!r} is not a module name like 'cv2' or "
                                "'google.protobuf'")
                continue
            if not isinstance(value, str) or not value.strip():
                problems.append(f"pkg_mapping[{key!r}] is {value!r}: it must be a distribution "
                                "name (a string), e.g. 'opencv-python'")
                continue
            resolved = self._resolve_dist("pkg_mapping", key, value.strip(), problems)
            if resolved is not None:
                self._mapping[key] = resolved

    def _resolve_dist(self, option: str, key: str, value: str, problems: list[str]
                      ) -> Distribution | str | None:
        if not _DIST_NAME.match(value):
            if any(ch in value for ch in "=<>~@"):
                return value  # a requirement with a version or URL: passed through
            problems.append(f"{option}: {value!r} is not a distribution name or requirement")
            return None
        dist = self.classifier.distribution(value)
        if dist is not None:
            return dist
        what = f"maps {key!r} to {value!r}" if option == "pkg_mapping" else f"names {value!r}"
        hint = _did_you_mean(value)
        problems.append(
            f"{option} {what}, which is not installed on this host (neither importlib.metadata "
            f"nor {self.classifier.conda_prefix}/conda-meta know it){hint}; install it, fix the "
            f"name, or give a version to pass it through unchecked, e.g. '{value}==1.0'")
        return None

    def _ignored(self, module: str) -> bool:
        return any(module == i or module.startswith(i + ".") for i in self.ignore)

    def _mapped(self, module: str) -> tuple[str, Distribution | str] | None:
        name = module
        while True:
            if name in self._mapping:
                return name, self._mapping[name]
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]

    def _type_decides(self, t: type) -> bool:
        """Whether instances of ``t`` need exactly what ``t`` needs (a distribution's type)."""
        return (not issubclass(t, _CONTAINER_TYPES) and pickled_by_reference(t)
                and self._opaque(getattr(t, "__module__", "") or ""))

    def _provider(self, module: str) -> str | None:
        """The distribution (``local:<name>``) providing ``module``; None if stdlib or none."""
        if self._ignored(module):
            return None
        mapped = self._mapped(module)
        if mapped is not None:
            target = mapped[1]
            if isinstance(target, Distribution):
                return target.name
            return normalize_name(re.split(r"[^A-Za-z0-9._-]", target)[0])
        found = self.classifier.classify(module)
        if found.kind == "distribution" and found.distribution is not None:
            return found.distribution.name
        if found.kind == "local" and found.local is not None:
            return f"local:{found.local.name}"
        return None

    def _opaque(self, module: str) -> bool:
        if not module or self._ignored(module):
            return True
        return self.classifier.classify(module).kind == "distribution"

    # public -----------------------------------------------------------------------------------
    def analyze(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Spec:
        """The pinned Spec of what ``func(*args, **kwargs)`` needs to run remotely.

        :raises UnresolvedImportError: a module it needs is neither stdlib, installed from a
            distribution, nor local code.
        """
        return self._analyze(func, args, kwargs)[1]

    def requirements(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Requirements:
        """The modules, distributions and local code ``func(*args, **kwargs)`` needs."""
        return self._analyze(func, args, kwargs)[0]

    def analyze_call(self, func: Callable[..., Any], *args: Any, **kwargs: Any
                     ) -> tuple[Spec, Requirements]:
        """Both :meth:`analyze` and :meth:`requirements` of one call, for one memo lookup."""
        requirements, spec = self._analyze(func, args, kwargs)
        return spec, requirements

    def clear(self) -> None:
        """Forget memoised results (after installing or removing packages).

        Edited local code needs no call: memoised results notice it within
        ``_LOCAL_RECHECK_SECONDS``.
        """
        with self._lock:
            self._memo = weakref.WeakKeyDictionary()
            self._by_code = weakref.WeakKeyDictionary()
            self._type_uses = weakref.WeakKeyDictionary()
            conda_prefix = self.classifier.conda_prefix
            self.classifier = Classifier(conda_prefix)
            self._imports = ImportScanner(self.classifier, self._provider)

    # core -------------------------------------------------------------------------------------
    def _analyze(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[Requirements, Spec]:
        if self.strip_parsl:
            func = strip_parsl_wrapper(func)
        root, extra = _split_callable(func)
        entry = self._entry(root)
        values = list(extra)
        values.extend(args)
        values.extend(kwargs.values())
        if not values:
            return entry.requirements, entry.spec
        uses = self._value_uses(values, describe(func))
        new = {m: u for m, u in uses.items()
               if m not in entry.uses and not self.classifier.is_stdlib(m)}
        if not new:
            return entry.requirements, entry.spec
        key = frozenset(new)
        found = entry.by_args.get(key)
        if found is None:
            merged = dict(entry.uses)
            merged.update(new)
            files: dict[str, Signature] = {}
            requirements = self._resolve(merged, describe(func), files)
            found = (requirements, self._pin(requirements))
            with self._lock:
                # the entry's own signatures win: a change since it was analysed stays visible
                files.update(entry.local_files)
                entry.local_files = tuple(files.items())
                entry.by_args[key] = found
        return found

    def _value_uses(self, values: list[Any], name: str) -> dict[str, ModuleUse]:
        uses: dict[str, ModuleUse] = {}
        for n, value in enumerate(values):
            t = type(value)
            if t in _ATOMIC:
                continue
            cached = self._type_uses.get(t)
            if cached is None:
                finder = ModuleFinder(self._opaque)
                finder.walk(value, f"argument {n} of {name} ({t.__module__}.{t.__qualname__})")
                cached = finder.modules
                if _plain_instance(value) and pickled_by_reference(t) and self._opaque(
                        t.__module__):
                    self._type_uses[t] = cached
            for module, use in cached.items():
                uses.setdefault(module, use)
        return uses

    def _entry(self, root: Any) -> _Entry:
        try:
            entry = self._memo.get(root)
        except TypeError:  # not weak-referenceable (a builtin): nothing to memoise
            entry = None
        stale = False
        if entry is not None and _valid(entry, root):
            if not entry.local_files or _local_fresh(entry):
                return entry
            stale = True  # its local code was edited: so may be that of its siblings
        with self._lock:
            entry = self._same_code_entry(root, recheck=stale)
            if entry is None:
                entry = self._build_entry(root)
                if entry.code is not None:
                    entries = self._by_code.setdefault(root.__code__, [])
                    entries.append(entry)
                    del entries[:-_CODE_ENTRIES]
            try:
                self._memo[root] = entry
            except TypeError:
                pass
        return entry

    def _same_code_entry(self, root: Any, recheck: bool = False) -> _Entry | None:
        """An entry of another function object with the same code, globals and cell values.

        New function objects from the same code (closures from a factory, Parsl's per-call
        walltime wrapper) then cost a memo check, not a new analysis. With ``recheck``, local
        files are looked at now, whenever they last were.
        """
        if not isinstance(root, types.FunctionType):
            return None
        entries = self._by_code.get(root.__code__)
        if not entries:
            return None
        for entry in entries:
            holder = entry.holder()
            if holder is not None and _globals_of(holder) is root.__globals__ and _valid(
                    entry, root, self._type_decides) and _local_fresh(entry, recheck):
                return entry
        return None

    def _build_entry(self, root: Any) -> _Entry:
        name = describe(root)
        finder = ModuleFinder(self._opaque)
        finder.walk(root, name)
        uses = {m: u for m, u in finder.modules.items() if not self.classifier.is_stdlib(m)}
        files: dict[str, Signature] = {}
        requirements = self._resolve(uses, name, files)
        bindings: dict[tuple[int, str], tuple[Any, str, Any]] = {}
        for owner, gname, value in finder.bindings:
            holder = _globals_holder(owner)
            bindings[(id(holder), gname)] = (weakref.ref(holder), gname, _fingerprint(value))
        is_func = isinstance(root, types.FunctionType)
        return _Entry(
            holder=weakref.ref(_globals_holder(root)) if is_func else weakref.ref(root),
            code=weakref.ref(root.__code__) if is_func else None,
            defaults=tuple(map(_fingerprint, root.__defaults__ or ())) if is_func else (),
            kwdefaults=tuple((k, _fingerprint(v)) for k, v in (root.__kwdefaults__ or {}).items())
            if is_func else (),
            cells=tuple(_fingerprint(_cell(c)) for c in root.__closure__ or ()) if is_func else (),
            bindings=tuple(bindings.values()),
            requirements=requirements,
            spec=self._pin(requirements),
            uses=uses,
            local_files=tuple(files.items()),
            checked=time.monotonic(),
        )

    def _resolve(self, uses: dict[str, ModuleUse], function: str,
                 files: dict[str, Signature] | None = None) -> Requirements:
        """Classify ``uses`` and what local code needs; ``files`` gets the local files' stat
        signatures by path, as hashed."""
        modules = dict(uses)
        queue = sorted(modules)
        providers: dict[str, str] = {}
        dists: dict[tuple[str, str], Distribution] = {}
        local: dict[str, LocalCode] = {}
        extra_reqs: list[str] = list(self._extra_reqs)
        skipped: list[str] = []
        scanned: set[str] = set()
        pulled: set[str] = set()  # modules an installed module imports at its top level
        while queue:
            module = queue.pop()
            use = modules[module]
            if self._ignored(module) or self.classifier.is_stdlib(module):
                modules.pop(module, None)
                continue
            mapped = self._mapped(module)
            if mapped is not None:
                key, target = mapped
                if isinstance(target, Distribution):
                    dists[(target.source, target.name)] = target
                    providers[module] = target.name
                else:
                    extra_reqs.append(target)
                    providers[module] = normalize_name(re.split(r"[^A-Za-z0-9._-]", target)[0])
                continue
            if module.startswith("."):
                raise UnresolvedImportError(
                    f"Cannot resolve the relative import of {module!r} in {use.where} "
                    f"(analysing {function}): the code belongs to no package (a script or "
                    "__main__). Use an absolute import: import the module by its name.",
                    module=module, function=function)
            found = self.classifier.classify(module)
            if found.kind == "stdlib":
                modules.pop(module, None)
            elif found.kind == "distribution" and found.distribution is not None:
                dists[(found.distribution.source, found.distribution.name)] = found.distribution
                providers[module] = found.distribution.name
                if module not in pulled:  # what those pull in, their metadata covers
                    for new_module, new_use in self._imports.imports_of(
                            module, found.distribution.name).items():
                        if new_module not in modules:
                            modules[new_module] = new_use
                            queue.append(new_module)
                            pulled.add(new_module)
            elif found.kind == "local" and found.local is not None:
                code = local.get(found.local.name)
                if code is None:
                    code = local[found.local.name] = self._local_now(found.local, files)
                providers[module] = f"local:{code.name}"
                scan = self._scan_local(module, code, scanned)
                for new_module, new_use in scan.items():
                    if new_module not in modules:
                        modules[new_module] = new_use
                        queue.append(new_module)
            elif found.kind == "missing" and use.optional:
                skipped.append(module)
                modules.pop(module, None)
            else:
                reason = ("it is not installed on this host" if found.kind == "missing"
                          else found.reason or "no installed distribution owns it")
                raise self._unresolved(module, use, function, reason)
        for dist in self._extra:
            dists[(dist.source, dist.name)] = dist
        return Requirements(
            function=function,
            modules=modules,
            providers=providers,
            distributions=tuple(sorted(dists.values(), key=lambda d: (d.source, d.name))),
            local=tuple(sorted(local.values(), key=lambda c: c.name)),
            extra_requirements=tuple(dict.fromkeys(extra_reqs)),
            skipped=tuple(sorted(skipped)),
        )

    def _local_now(self, code: LocalCode, files: dict[str, Signature] | None) -> LocalCode:
        """``code`` with the hash of its files now (the classifier caches the first it saw)."""
        sha256, signature = self.classifier.hash_and_signature(Path(code.path))
        if files is not None:
            files[code.path] = signature
        return code if sha256 == code.sha256 else replace(code, sha256=sha256)

    def _scan_local(self, module: str, code: LocalCode, scanned: set[str]
                    ) -> dict[str, ModuleUse]:
        """Modules needed to import local ``module`` remotely: its globals and its parents'.

        Modules loaded here are walked live; others are read from their source file.
        """
        finder = ModuleFinder(self._opaque)
        found: dict[str, ModuleUse] = {}
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in scanned:
                continue
            scanned.add(name)
            loaded = sys.modules.get(name)
            if isinstance(loaded, types.ModuleType):
                finder.scan_module(loaded)
                continue
            source = _local_source(Path(code.path), parts[1:i])
            if source is not None:
                found.update(static_module_uses(str(source[0]), name, is_package=source[1]))
        found.update(finder.modules)
        return {m: u for m, u in found.items() if not self.classifier.is_stdlib(m)}

    def resolve(self, uses: Mapping[str, ModuleUse], function: str) -> Requirements:
        """Classify modules found some other way (e.g. statically, from a script)."""
        uses = {m: u for m, u in uses.items() if not self.classifier.is_stdlib(m)}
        return self._resolve(dict(uses), function)

    def pin(self, requirements: Requirements) -> Spec:
        """The pinned Spec of ``requirements`` with this analyzer's options."""
        return self._pin(requirements)

    def _unresolved(self, module: str, use: ModuleUse, function: str, reason: str
                    ) -> UnresolvedImportError:
        top = module.lstrip(".").split(".")[0] or module
        msg = (
            f"Cannot tell which distribution provides module {module!r}, used by "
            f"{use.where} (analysing {function}): {reason}. If a distribution provides it, "
            f"map it: Analyzer(pkg_mapping={{{top!r}: 'DISTRIBUTION'}}) or "
            f"PonchoExecutor(pkg_mapping=...) or poncho_package_analyze --pkg-mapping "
            f"{top}=DISTRIBUTION (a name installed here, or 'DISTRIBUTION==VERSION'); "
            f"to leave it out, ignore=[{top!r}]."
        )
        return UnresolvedImportError(msg, module=module, function=function)

    def _pin(self, requirements: Requirements) -> Spec:
        return pin_spec(
            requirements.distributions,
            requirements.local,
            self.classifier,
            pin_transitive=self.pin_transitive,
            channels=self.channels,
            extra_requirements=requirements.extra_requirements,
        )


def _local_source(top: Path, sub: list[str]) -> tuple[Path, bool] | None:
    """(source file, is a package) of a local module below the top-level path ``top``."""
    if not sub:
        if top.is_dir():
            init = top / "__init__.py"
            return (init, True) if init.is_file() else None
        return (top, False) if top.suffix == ".py" else None
    base = top.joinpath(*sub)
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _valid(entry: _Entry, root: Any, by_type: Callable[[type], bool] | None = None) -> bool:
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
        if holder is None or not _matches(fp, _globals_of(holder).get(name, _MISSING)):
            return False
    return True


def _local_fresh(entry: _Entry, recheck: bool = False) -> bool:
    """Whether the local files of ``entry`` are as analysed.

    They are looked at once per ``_LOCAL_RECHECK_SECONDS`` (every time with ``recheck``).
    """
    if not entry.local_files:
        return True
    if entry.stale:
        return False
    now = time.monotonic()
    if not recheck and now - entry.checked < _LOCAL_RECHECK_SECONDS:
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


def _globals_holder(func: types.FunctionType) -> Any:
    """The module whose namespace is ``func.__globals__`` (it outlives the function), or func."""
    module = sys.modules.get(func.__globals__.get("__name__", ""))
    if module is not None and getattr(module, "__dict__", None) is func.__globals__:
        return module
    return func


def _globals_of(holder: Any) -> dict[str, Any]:
    if isinstance(holder, types.ModuleType):
        return vars(holder)
    return holder.__globals__


def _split_callable(func: Any) -> tuple[Any, list[Any]]:
    """(the function or class to memoise on, the bound values that travel with it)."""
    extra: list[Any] = []
    while True:
        if isinstance(func, functools.partial):
            extra.extend(func.args)
            extra.extend(func.keywords.values())
            func = func.func
        elif isinstance(func, types.MethodType):
            extra.append(func.__self__)
            func = func.__func__
        elif isinstance(func, (types.FunctionType, type, types.BuiltinFunctionType)):
            return func, extra
        elif callable(func):
            extra.append(func)
            return type(func), extra
        else:
            raise AnalysisError(f"Cannot analyse {func!r}: it is not callable; pass the "
                                "function the app runs")


def _plain_instance(value: Any) -> bool:
    return not isinstance(value, (types.FunctionType, type, types.ModuleType, types.MethodType,
                                  functools.partial, list, tuple, set, frozenset, dict))


def _check_names(option: str, values: Any, problems: list[str], modules: bool = True
                 ) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)):
        problems.append(f"{option} must be a list of names, got the string {values!r}; "
                        f"did you mean [{values!r}]?")
        return ()
    try:
        items = list(values)
    except TypeError:
        problems.append(f"{option} must be a list of names, got {type(values).__name__} "
                        f"{values!r}")
        return ()
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, str):
            problems.append(f"{option}[{n}] is {item!r} ({type(item).__name__}): "
                            f"{option} entries must be strings"
                            + (" naming modules, e.g. 'numpy'" if modules else ""))
        elif modules and not _MODULE_NAME.match(item):
            problems.append(f"{option}[{n}] is {item!r}, not a module name like 'numpy' or "
                            "'scipy.stats'")
        else:
            out.append(item.strip())
    return tuple(out)


def _did_you_mean(name: str) -> str:
    import importlib.metadata as metadata

    names = {normalize_name(d.metadata["Name"] or "") for d in metadata.distributions()}
    close = difflib.get_close_matches(normalize_name(name), sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
