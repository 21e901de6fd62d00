"""Analyzer: a callable and its arguments -> what they need -> a pinned Spec, memoised.

Results are memoised per callable (weakly: nothing is kept alive by the memo) and re-used while
its code object, defaults, closure cells and the global bindings its analysis read are the same
objects, and while the local code it hashed is unchanged (memo.py says how both are checked); a
second analysis costs microseconds.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import types
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from parsl_poncho.analyze.byref import ImportScanner
from parsl_poncho.analyze.classify import Classifier, Distribution, normalize_name
from parsl_poncho.analyze.memo import MemoEntry, globals_of, local_fresh, new_entry, still_valid
from parsl_poncho.analyze.modules import (
    ATOMIC,
    ModuleFinder,
    ModuleUse,
    describe,
    pickled_by_reference,
    static_module_uses,
    strip_parsl_wrapper,
)
from parsl_poncho.analyze.options import check_mapping, check_names, resolve_dist
from parsl_poncho.analyze.pin import pin_spec
from parsl_poncho.codehash import Signature
from parsl_poncho.errors import AnalysisError, AnalysisOptionError, UnresolvedImportError
from parsl_poncho.spec import LocalCode, Spec

_CONTAINER_TYPES = (list, tuple, set, frozenset, dict)
_CODE_ENTRIES = 8  # entries kept per code object for new function objects to reuse


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
        self.ignore = check_names("ignore", ignore, problems)
        self.channels = None if channels is None else check_names("channels", channels,
                                                                  problems, modules=False)
        self._mapping = check_mapping(pkg_mapping, self.classifier, problems)
        self._extra: list[Distribution] = []
        self._extra_reqs: list[str] = []
        for name in check_names("extra_pkgs", extra_pkgs, problems, modules=False):
            resolved = resolve_dist("extra_pkgs", name, name, self.classifier, problems)
            if isinstance(resolved, Distribution):
                self._extra.append(resolved)
            elif resolved is not None:
                self._extra_reqs.append(resolved)
        if problems:
            raise AnalysisOptionError(
                "Invalid analysis options:\n  " + "\n  ".join(problems), problems)
        self._memo: weakref.WeakKeyDictionary[Any, MemoEntry] = weakref.WeakKeyDictionary()
        self._by_code: weakref.WeakKeyDictionary[Any, list[MemoEntry]] = weakref.WeakKeyDictionary()
        self._type_uses: weakref.WeakKeyDictionary[type, dict[str, ModuleUse]] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.RLock()
        self._imports = ImportScanner(self.classifier, self._provider)

    # which distribution provides a module -----------------------------------------------------
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
        ``memo.LOCAL_RECHECK_SECONDS``.
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
            if t in ATOMIC:
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

    def _entry(self, root: Any) -> MemoEntry:
        try:
            entry = self._memo.get(root)
        except TypeError:  # not weak-referenceable (a builtin): nothing to memoise
            entry = None
        stale = False
        if entry is not None and still_valid(entry, root):
            if not entry.local_files or local_fresh(entry):
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

    def _same_code_entry(self, root: Any, recheck: bool = False) -> MemoEntry | None:
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
            if holder is not None and globals_of(holder) is root.__globals__ and still_valid(
                    entry, root, self._type_decides) and local_fresh(entry, recheck):
                return entry
        return None

    def _build_entry(self, root: Any) -> MemoEntry:
        name = describe(root)
        finder = ModuleFinder(self._opaque)
        finder.walk(root, name)
        uses = {m: u for m, u in finder.modules.items() if not self.classifier.is_stdlib(m)}
        files: dict[str, Signature] = {}
        requirements = self._resolve(uses, name, files)
        return new_entry(root, finder.bindings, requirements, self._pin(requirements), uses, files)

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
            f"PonchoExecutor(envs=EnvOptions(pkg_mapping=...)) or "
            f"poncho_package_analyze --pkg-mapping "
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
