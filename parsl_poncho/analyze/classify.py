"""Say what provides a module: the standard library, an installed distribution, or local code.

Distributions come from ``importlib.metadata`` (pip, uv, ...) and from the ``conda-meta`` records
of a conda prefix (``sys.prefix`` by default; injectable), which win when both know a package and
carry the build string and channel. A module no distribution owns, found in a file outside
site-packages, or one owned by an editable install, is *local*: shipped with the task, keyed by the
content hash of its files.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from parsl_poncho.codehash import Signature, hash_files, list_code_files, stat_signature
from parsl_poncho.errors import AnalysisError
from parsl_poncho.spec import LocalCode

Kind = Literal["stdlib", "distribution", "local", "missing", "unresolved"]
Source = Literal["pip", "conda"]

_PLATFORM_SUBDIRS = re.compile(r"/(noarch|(linux|osx|win)-[a-z0-9_]+)/?$")
_ANACONDA = "https://conda.anaconda.org/"


def normalize_name(name: str) -> str:
    """PEP 503 normalised distribution name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Distribution:
    """An installed distribution, pinned: pip ``name==version`` or conda ``name=version=build``."""

    name: str
    version: str
    source: Source = "pip"
    build: str | None = None
    channel: str | None = None

    def requirement(self) -> str:
        """The pinned requirement string for the spec's ``pip`` or ``conda`` list."""
        if self.source == "conda":
            return f"{self.name}={self.version}={self.build}" if self.build else (
                f"{self.name}={self.version}")
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Classification:
    """What provides one module."""

    module: str
    kind: Kind
    distribution: Distribution | None = None
    local: LocalCode | None = None
    reason: str = ""


@dataclass(frozen=True)
class CondaRecord:
    """The parts of a ``conda-meta/*.json`` record the analysis uses."""

    name: str
    version: str
    build: str
    channel: str | None
    depends: tuple[str, ...]

    def distribution(self) -> Distribution:
        """This record as a pinned conda distribution."""
        return Distribution(self.name, self.version, "conda", self.build, self.channel)


def normalize_channel(channel: str | None) -> str | None:
    """``https://conda.anaconda.org/conda-forge/linux-64`` -> ``conda-forge``; URLs kept."""
    if not channel:
        return None
    channel = _PLATFORM_SUBDIRS.sub("", channel.rstrip("/"))
    if channel.startswith(_ANACONDA):
        channel = channel[len(_ANACONDA):]
    return channel or None


class CondaPrefix:
    """The conda packages installed in a prefix, indexed by import name and by dist name."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.by_name: dict[str, CondaRecord] = {}
        self.by_import: dict[str, CondaRecord] = {}
        self.by_dist: dict[str, CondaRecord] = {}
        meta = self.prefix / "conda-meta"
        if meta.is_dir():
            for path in sorted(meta.glob("*.json")):
                self._add(path)

    def _add(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            record = CondaRecord(
                name=str(data["name"]), version=str(data["version"]),
                build=str(data.get("build") or data.get("build_string") or ""),
                channel=normalize_channel(data.get("channel")),
                depends=tuple(str(d) for d in data.get("depends", ())),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AnalysisError(
                f"Conda record {path} is unreadable ({exc}); repair or remove it, or point the "
                "analysis at another prefix (Analyzer(conda_prefix=...))"
            ) from exc
        self.by_name[record.name] = record
        for file in data.get("files", ()):
            parts = str(file).replace("\\", "/").split("/")
            try:
                idx = parts.index("site-packages")
            except ValueError:
                continue
            if idx + 1 >= len(parts):
                continue
            top = parts[idx + 1]
            if top.endswith((".dist-info", ".egg-info")):
                self.by_dist[normalize_name(top.split("-")[0])] = record
            elif top not in ("__pycache__",) and not top.endswith((".pth", ".egg-link")):
                self.by_import.setdefault(top.split(".")[0], record)


@functools.cache
def _site_dirs() -> tuple[str, ...]:
    dirs = {p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))}
    for key in ("purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    return tuple(os.path.realpath(d) + os.sep for d in dirs if d)


@functools.cache
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib"))


class Classifier:
    """Classifies modules; all indexes are built lazily, once, and shared across threads.

    :param conda_prefix: the conda prefix whose ``conda-meta`` records to use (default
        ``sys.prefix``; a venv has none, so everything is pip).
    """

    def __init__(self, conda_prefix: str | Path | None = None) -> None:
        self.conda_prefix = Path(conda_prefix) if conda_prefix is not None else Path(sys.prefix)
        self._lock = threading.RLock()
        self._top_dists: Mapping[str, list[str]] | None = None
        self._conda: CondaPrefix | None = None
        self._dists: dict[str, Any] = {}
        self._derived: dict[tuple[Any, ...], Any] = {}
        self._cache: dict[str, Classification] = {}
        self._hashes: dict[str, tuple[Signature, str]] = {}
        self._stdlib = frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(
            sys.builtin_module_names) | {"__main__", "__mp_main__", "__future__"}

    # indexes ----------------------------------------------------------------------------------
    @property
    def conda(self) -> CondaPrefix:
        """The conda records of the prefix (empty when it is not a conda prefix)."""
        if self._conda is None:
            with self._lock:
                if self._conda is None:
                    self._conda = CondaPrefix(self.conda_prefix)
        return self._conda

    def _top_level(self) -> Mapping[str, list[str]]:
        if self._top_dists is None:
            with self._lock:
                if self._top_dists is None:
                    self._top_dists = metadata.packages_distributions()
        return self._top_dists

    def installed(self, name: str) -> Any | None:
        """The installed ``importlib.metadata`` distribution called ``name``, or None."""
        key = normalize_name(name)
        if key not in self._dists:
            try:
                self._dists[key] = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                self._dists[key] = None
        return self._dists[key]

    def distribution(self, name: str) -> Distribution | None:
        """The pinned distribution called ``name`` (conda record first), or None (cached)."""
        key = ("dist", name)
        if key not in self._derived:
            self._derived[key] = self._distribution(name)
        return self._derived[key]

    def dependencies(self, name: str, extras: tuple[str, ...] = ()) -> list[
            tuple[str, tuple[str, ...]]]:
        """(name, extras) of the installed distribution's requirements that hold here (cached)."""
        key = ("deps", name, extras)
        if key not in self._derived:
            meta = self.installed(name)
            self._derived[key] = [] if meta is None else requirement_names(meta.requires, extras)
        return self._derived[key]

    def _distribution(self, name: str) -> Distribution | None:
        record = self.conda.by_name.get(name) or self.conda.by_dist.get(normalize_name(name))
        if record is not None:
            return record.distribution()
        dist = self.installed(name)
        if dist is None:
            return None
        return Distribution(normalize_name(dist.metadata["Name"] or name), dist.version, "pip")

    # classification ---------------------------------------------------------------------------
    def is_stdlib(self, module: str) -> bool:
        """Whether ``module`` is part of the standard library or built into the interpreter."""
        return module.split(".")[0] in self._stdlib

    def classify(self, module: str) -> Classification:
        """What provides ``module`` (a dotted name). Cached per top-level name."""
        top = module.split(".")[0]
        if top in self._stdlib:
            return Classification(module, "stdlib")
        cached = self._cache.get(module) or self._cache.get(top)
        if cached is not None:
            return cached
        with self._lock:
            result, shared = self._classify(module, top)
            self._cache[module if shared else top] = result
        return result

    def _classify(self, module: str, top: str) -> tuple[Classification, bool]:
        """(classification, whether it holds only for ``module``, not its whole top level)."""
        names = self._same_name_owner(top) or list(dict.fromkeys(self._top_level().get(top, ())))
        shared = len(names) > 1  # a namespace package several distributions contribute to
        if shared:
            names = self._owners(module, names) or names[:1]
        return self._classify_names(module, top, names), shared

    def _classify_names(self, module: str, top: str, names: list[str]) -> Classification:
        record = self.conda.by_import.get(top)
        if record is not None:
            return Classification(module, "distribution", record.distribution())
        origin = _origin(top)
        if origin is None and top not in sys.modules and not names:
            return Classification(module, "missing", reason=f"no module named {top!r}")
        if names:
            dist = self.installed(names[0])
            if dist is not None:
                if _is_editable(dist) or _in_source_tree(origin, dist):
                    return self._local(module, top, origin, "editable or development install")
                conda = self.conda.by_dist.get(normalize_name(dist.metadata["Name"] or ""))
                if conda is not None:
                    return Classification(module, "distribution", conda.distribution())
                return Classification(module, "distribution", Distribution(
                    normalize_name(dist.metadata["Name"] or names[0]), dist.version, "pip"))
        if origin is None:
            return Classification(module, "unresolved", reason="it has no file on disk")
        real = os.path.realpath(origin)
        if real.startswith(_stdlib_dirs()) and not real.startswith(_site_dirs()):
            return Classification(module, "stdlib")
        if real.startswith(_site_dirs()):
            return Classification(module, "unresolved", reason=(
                f"{origin} is in site-packages but no installed distribution's metadata lists it"))
        return self._local(module, top, origin, "no distribution owns it")

    def _same_name_owner(self, top: str) -> list[str]:
        """The distribution named like the import name, if it provides it (no full index)."""
        dist = self.installed(top)
        if dist is None:
            return []
        listed = dist.read_text("top_level.txt")
        if listed is not None:
            return [top] if top in listed.split() else []
        record = dist.read_text("RECORD") or ""
        for line in record.splitlines():
            head = line.split(",", 1)[0].split("/", 1)[0]
            if head == top or head.split(".")[0] == top and not head.endswith("-info"):
                return [top]
        return []

    def _owners(self, module: str, names: list[str]) -> list[str]:
        """For a namespace package shared by several distributions: those owning ``module``."""
        spec_origin = _origin(module) or ""
        owners = []
        for name in names:
            dist = self.installed(name)
            for file in (dist.files or ()) if dist is not None else ():
                if str(dist.locate_file(file)) == spec_origin:
                    owners.append(name)
                    break
        return owners

    def _local(self, module: str, top: str, origin: str | None, why: str) -> Classification:
        if origin is None:
            return Classification(module, "unresolved", reason="it has no file on disk")
        path = Path(origin)
        if path.name.startswith("__init__.") or path.is_dir():
            path = path.parent if path.is_file() else path
        local = LocalCode(name=top, path=str(path), sha256=self.content_hash(path))
        return Classification(module, "local", local=local, reason=why)

    def content_hash(self, path: Path) -> str:
        """The content hash of a module file or package dir (``codehash.hash_code``).

        Cached while the files' (path, mtime_ns, size) signature stays the same.
        """
        return self.hash_and_signature(path)[0]

    def hash_and_signature(self, path: Path) -> tuple[str, Signature]:
        """(content hash, stat signature) of a module file or package dir, from one listing."""
        files = list_code_files(path)
        signature = stat_signature(files)
        cached = self._hashes.get(str(path))
        if cached is not None and cached[0] == signature:
            return cached[1], signature
        value = hash_files((f.rel, f.path) for f in files)
        self._hashes[str(path)] = (signature, value)
        return value, signature


def _origin(module: str) -> str | None:
    """The file (or package dir) a module comes from, without importing it if not loaded."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        if file:
            return str(file)
        paths = list(getattr(loaded, "__path__", None) or ())
        if len(paths) == 1:
            return str(paths[0])
        spec = getattr(loaded, "__spec__", None)
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        return str(spec.origin)
    locations = list(spec.submodule_search_locations or ())
    return str(locations[0]) if len(locations) == 1 else None


def _in_source_tree(origin: str | None, dist: Any) -> bool:
    """A development install: egg-info metadata, the module outside site-packages and stdlib.

    (``pip install --target DIR`` also puts modules outside site-packages, with dist-info:
    those stay distributions.)
    """
    meta_path = str(getattr(dist, "_path", ""))
    if origin is None or not meta_path.rstrip("/").endswith(".egg-info"):
        return False
    real = os.path.realpath(origin)
    return not real.startswith(_site_dirs()) and not real.startswith(_stdlib_dirs())


def _is_editable(dist: Any) -> bool:
    try:
        text = dist.read_text("direct_url.json")
    except OSError:  # pragma: no cover
        return False
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def requirement_names(requires: Iterable[str] | None, extras: Iterable[str] = ()) -> list[
        tuple[str, tuple[str, ...]]]:
    """(name, extras) of each requirement whose environment marker holds on this host."""
    out = []
    extras = tuple(extras) or ("",)
    for text in requires or ():
        parsed = _parse_requirement(text, extras)
        if parsed is not None:
            out.append(parsed)
    return out


def _parse_requirement(text: str, extras: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is nearly always there
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        if not match or "extra ==" in text:
            return None
        return match.group(1), ()
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    if req.marker is not None and not any(
        req.marker.evaluate({"extra": extra}) for extra in extras
    ):
        return None
    return req.name, tuple(sorted(req.extras))
