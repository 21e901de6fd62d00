"""Environment specs: the PONCHO JSON formats in and out, validation, canonical form and hash.

A :class:`Spec` is read from cctools' PONCHO JSON (current format: ``conda.dependencies`` with a
``{"pip": [...]}`` item; old format: ``conda.packages`` plus a top-level ``pip`` list), from a
conda ``environment.yml`` or from a pip ``requirements.txt`` (those two: spec_files.py).
Validation (spec_checks.py) runs the JSON Schema and semantic checks, collects every problem and
raises one :class:`~parsl_poncho.errors.SpecError` listing them by JSON path.

The canonical form (:meth:`Spec.canonical_json`) sorts keys and lists (except conda channels and
extra index URLs, whose order is a priority), normalises conda match specs and pip requirements
(PEP 503 names, PEP 440 versions), and keys local code by name and content hash, never its path.
:meth:`Spec.hash` adds the platform and :data:`BUILD_FORMAT_VERSION`.

Example::

    >>> spec = Spec.from_dict({"conda": {"channels": ["conda-forge"],
    ...     "dependencies": ["python=3.11", "pip", {"pip": ["NumPy==2.1"]}]}})
    >>> spec.pip
    ('numpy==2.1',)
    >>> len(spec.hash("linux-64"))
    64
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parsl_poncho.nesting import json_text_too_deep
from parsl_poncho.spec_checks import (
    EXTENSION_KEY,
    TOO_DEEP_FOR_PYTHON,
    spec_error,
    too_deep_problem,
    validate_dict,
)
from parsl_poncho.spec_files import environment_yml_data, read_text, requirements_data

#: Bumped whenever the builder changes what a given spec produces; part of every hash.
BUILD_FORMAT_VERSION = 1

HttpType = Literal["file", "tar"]

#: Channels used when a spec names none.
DEFAULT_CHANNELS: tuple[str, ...] = ("conda-forge",)


@dataclass(frozen=True)
class GitData:
    """A git repository cloned at ``ref`` and exposed as an environment variable."""

    remote: str
    ref: str = "HEAD"


@dataclass(frozen=True)
class HttpData:
    """A file fetched over http(s), optionally unpacked, exposed as an environment variable."""

    url: str
    type: HttpType = "file"
    compression: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class LocalCode:
    """A module file or package directory of the user's, shipped into site-packages.

    ``name`` is the top-level import name; ``sha256`` is the content hash that keys the spec
    (never the path, which only says where to copy from on this host).
    """

    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class PipOptions:
    """Where the pip part installs from."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("extra_index_urls", "find_links", "trusted_hosts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def is_default(self) -> bool:
        """True when no option is set (the pip part uses the installer's defaults)."""
        return self == PipOptions()


@dataclass(frozen=True)
class Spec:
    """A pinned environment: conda match specs, pip requirements, data and local code.

    Build one with :meth:`from_dict` / :meth:`from_file` (validated, normalised) or directly
    (then call :meth:`validate` before trusting it). Lists given to the constructor are turned
    into tuples.
    """

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    conda: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    pip_options: PipOptions = field(default_factory=PipOptions)
    git: Mapping[str, GitData] = field(default_factory=dict)
    http: Mapping[str, HttpData] = field(default_factory=dict)
    local: tuple[LocalCode, ...] = ()

    def __post_init__(self) -> None:
        for name in ("channels", "conda", "pip", "local"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        # plain mappings are accepted where the model has dataclasses
        local = tuple(LocalCode(**c) if isinstance(c, Mapping) else c for c in self.local)
        object.__setattr__(self, "local", local)
        if isinstance(self.pip_options, Mapping):
            object.__setattr__(self, "pip_options", PipOptions(**self.pip_options))
        for name, cls in (("git", GitData), ("http", HttpData)):
            items = dict(getattr(self, name)).items()
            value = {k: cls(**v) if isinstance(v, Mapping) else v for k, v in sorted(items)}
            object.__setattr__(self, name, value)

    # -- input -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Spec:
        """Parse a PONCHO spec (current or old format, with our extensions).

        :param data: the decoded JSON object.
        :param source: where it came from (a file name), used in error messages.
        :raises SpecError: listing every problem found, each as ``json.path: what is wrong``.
        """
        try:
            problems = validate_dict(data)
            if problems:
                raise spec_error(problems, source)
            return _build_spec(data)
        except RecursionError as exc:  # a last resort: validate_dict refuses deep input first
            raise spec_error([TOO_DEEP_FOR_PYTHON], source) from exc

    @classmethod
    def from_file(cls, path: str | Path) -> Spec:
        """Read a PONCHO JSON spec, a conda ``environment.yml`` or a pip ``requirements.txt``.

        The kind is chosen by name: ``*.yml``/``*.yaml`` is an environment.yml, ``*.txt`` or a
        name containing ``requirements`` is a requirements file, anything else is JSON. Relative
        local-code paths are resolved against the file's directory.

        :raises SpecError: the file cannot be read or is not a valid spec.
        """
        path = Path(path)
        name = path.name.lower()
        if name.endswith((".yml", ".yaml")):
            return cls.from_environment_yml(path)
        if name.endswith(".txt") or "requirements" in name:
            return cls.from_requirements(path)
        text = read_text(path)
        try:
            data = decode_json(text, source=str(path))
        except json.JSONDecodeError as exc:
            problem = (
                f"line {exc.lineno} column {exc.colno}: {exc.msg} (not valid JSON; name the file "
                "*.yml or *requirements*.txt for those formats)"
            )
            raise spec_error([problem], str(path)) from exc
        spec = cls.from_dict(data, source=str(path))
        return spec.with_local_paths_relative_to(path.parent)

    @classmethod
    def from_environment_yml(cls, path: str | Path) -> Spec:
        """Read a conda ``environment.yml`` (``name``/``prefix`` are ignored).

        Pip items may carry ``--index-url``/``--extra-index-url``/``--find-links`` and ``-r``
        lines, as conda allows.
        :raises SpecError: unreadable file, bad YAML or invalid content.
        """
        return _build_spec(environment_yml_data(Path(path)))

    @classmethod
    def from_requirements(cls, path: str | Path, *, python: str | None = None) -> Spec:
        """Read a pip ``requirements.txt``; the conda part is ``python=<python>`` and ``pip``.

        Supports ``-i/--index-url``, ``--extra-index-url``, ``-f/--find-links`` and
        ``-r/--requirement`` lines. ``python`` defaults to the running interpreter's X.Y.Z.
        :raises SpecError: unreadable file or invalid/unsupported lines.
        """
        data = requirements_data(Path(path), python=python or _python_version(),
                                 channels=DEFAULT_CHANNELS)
        return _build_spec(data)

    def with_local_paths_relative_to(self, base: Path) -> Spec:
        """A copy whose relative local-code paths are made absolute against ``base``."""
        local = tuple(
            LocalCode(c.name, str((base / c.path).resolve()), c.sha256)
            if not Path(c.path).is_absolute()
            else c
            for c in self.local
        )
        return _replace(self, local=local)

    def validate(self) -> Spec:
        """Check a directly constructed Spec; returns the normalised equivalent.

        :raises SpecError: listing every problem.
        """
        return Spec.from_dict(self.to_dict(), source="Spec object")

    # -- output ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The current PONCHO format; extensions only under EXTENSION_KEY, only when used.

        Without extensions the result is a spec cctools' ``poncho_package_create`` accepts: a
        ``conda`` section with ``channels`` and ``dependencies`` (the pip list as the last
        ``{"pip": [...]}`` item), ``git`` entries with ``remote``/``ref``, ``http`` entries with
        ``url``/``type`` (+ ``compression``/``sha256`` when set; poncho ignores ``sha256``).
        """
        dependencies: list[Any] = list(self.conda)
        if self.pip:
            dependencies.append({"pip": list(self.pip)})
        out: dict[str, Any] = {
            "conda": {"channels": list(self.channels), "dependencies": dependencies}
        }
        if self.git:
            out["git"] = {
                var: {"remote": g.remote, "ref": g.ref} for var, g in sorted(self.git.items())
            }
        if self.http:
            out["http"] = {var: _http_to_dict(h) for var, h in sorted(self.http.items())}
        extensions = self._extensions_dict()
        if extensions:
            out[EXTENSION_KEY] = extensions
        return out

    def _extensions_dict(self) -> dict[str, Any]:
        ext: dict[str, Any] = {}
        if self.local:
            # A mapping, not a list: cctools' sort_spec() calls list.sort(), which fails on dicts.
            ext["local"] = {
                c.name: {"path": c.path, "sha256": c.sha256}
                for c in sorted(self.local, key=lambda c: c.name)
            }
        opts = self.pip_options
        if not opts.is_default():
            pip_options: dict[str, Any] = {}
            if opts.index_url:
                pip_options["index_url"] = opts.index_url
            if opts.extra_index_urls:
                pip_options["extra_index_urls"] = list(opts.extra_index_urls)
            if opts.find_links:
                pip_options["find_links"] = list(opts.find_links)
            if opts.trusted_hosts:
                pip_options["trusted_hosts"] = list(opts.trusted_hosts)
            ext["pip_options"] = pip_options
        return ext

    def canonical_dict(self) -> dict[str, Any]:
        """The normalised content that identifies the environment (see module docstring)."""
        opts = self.pip_options
        canonical = {
            "channels": _unique(c.rstrip("/") for c in self.channels),
            "conda": sorted(set(_canonical_match_spec(s) for s in self.conda)),
            "pip": sorted(set(_canonical_requirement(s) for s in self.pip)),
            "pip_options": {
                "index_url": opts.index_url.rstrip("/") if opts.index_url else None,
                "extra_index_urls": _unique(u.rstrip("/") for u in opts.extra_index_urls),
                "find_links": sorted(set(opts.find_links)),
            },
            "git": {var: {"remote": g.remote, "ref": g.ref} for var, g in self.git.items()},
            "http": {
                var: {
                    "url": h.url,
                    "type": h.type,
                    "compression": h.compression,
                    "sha256": h.sha256.lower() if h.sha256 else None,
                }
                for var, h in self.http.items()
            },
            "local": {c.name: c.sha256.lower() for c in self.local},
        }
        if opts.trusted_hosts:  # only when set, so the hashes of existing specs stay as they were
            canonical["pip_options"]["trusted_hosts"] = sorted(set(opts.trusted_hosts))
        return canonical

    def canonical_json(self) -> str:
        """Sorted, normalised JSON: equal for specs that differ only in order or spelling.

        Computed once per Spec object (a Spec is immutable: never mutate its git/http dicts).
        """
        cached = self.__dict__.get("_canonical_json")
        if cached is None:
            cached = json.dumps(
                self.canonical_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            object.__setattr__(self, "_canonical_json", cached)
        return cached

    def hash(self, platform: str | None = None) -> str:
        """sha256 hex of the canonical spec, the platform (default: this host's) and format."""
        payload = json.dumps(
            {
                "spec": self.canonical_json(),
                "platform": platform or current_platform(),
                "format": BUILD_FORMAT_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def decode_json(text: str, *, source: str | None = None) -> Any:
    """``json.loads(text)``, refusing text nested deeper than a spec may be.

    :raises SpecError: nested more than :data:`~parsl_poncho.nesting.MAX_DEPTH` levels.
    :raises json.JSONDecodeError: not JSON (callers word that for their input).
    """
    too_deep = json_text_too_deep(text)
    if too_deep:
        raise spec_error([too_deep_problem("line {} column {}".format(*too_deep))], source)
    try:
        return json.loads(text)
    except RecursionError as exc:  # a last resort: the scan above refuses deep text first
        raise spec_error([TOO_DEEP_FOR_PYTHON], source) from exc


# -- platform ---------------------------------------------------------------------------------
@functools.cache
def current_platform() -> str:
    """This host's conda platform, e.g. ``"linux-64"``."""
    try:
        import rattler

        subdir = getattr(rattler, "Subdir", None) or rattler.Platform  # Platform: py-rattler<0.2x
        return str(subdir.current())
    except Exception:  # pragma: no cover - rattler is a dependency; keep a stdlib fallback
        import platform as _platform

        machine = _platform.machine()
        system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(
            _platform.system(), _platform.system().lower()
        )
        arch = {"x86_64": "64", "AMD64": "64", "arm64": "arm64"}.get(machine, machine)
        return f"{system}-{arch}"


def _python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


# -- building a Spec from validated data -------------------------------------------------------
def _build_spec(data: Mapping[str, Any]) -> Spec:
    conda = data.get("conda") or {}
    channels = tuple(conda.get("channels", DEFAULT_CHANNELS))
    conda_specs: list[str] = []
    pip: list[str] = list(data.get("pip", []))
    for item in conda.get("dependencies", conda.get("packages", [])):
        if isinstance(item, str):
            conda_specs.append(item.strip())
        else:
            pip.extend(item["pip"])
    ext = data.get(EXTENSION_KEY) or {}
    return Spec(
        channels=tuple(_unique(c.strip() for c in channels)),
        conda=tuple(_unique_by(conda_specs, _canonical_match_spec)),
        pip=tuple(sorted(set(_canonical_requirement(p) for p in pip))),
        pip_options=_pip_options_from(ext.get("pip_options") or {}),
        git={
            var: GitData(remote=e["remote"], ref=e.get("ref", "HEAD"))
            for var, e in (data.get("git") or {}).items()
        },
        http={
            var: HttpData(
                url=e["url"],
                type=e.get("type", "file"),
                compression=e.get("compression"),
                sha256=e["sha256"].lower() if e.get("sha256") else None,
            )
            for var, e in (data.get("http") or {}).items()
        },
        local=_local_from(ext.get("local") or ()),
    )


def _pip_options_from(opts: Mapping[str, Any]) -> PipOptions:
    return PipOptions(
        index_url=opts.get("index_url"),
        extra_index_urls=tuple(_unique(opts.get("extra_index_urls", ()))),
        find_links=tuple(_unique(opts.get("find_links", ()))),
        trusted_hosts=tuple(_unique(opts.get("trusted_hosts", ()))),
    )


def _local_from(local: Any) -> tuple[LocalCode, ...]:
    if isinstance(local, Mapping):
        items = [(name, e) for name, e in local.items()]
    else:
        items = [(e["name"], e) for e in local]
    unique = {name: LocalCode(name, e["path"], e["sha256"].lower()) for name, e in items}
    return tuple(unique[name] for name in sorted(unique))


def _http_to_dict(h: HttpData) -> dict[str, Any]:
    out: dict[str, Any] = {"url": h.url, "type": h.type}
    if h.compression:
        out["compression"] = h.compression
    if h.sha256:
        out["sha256"] = h.sha256
    return out


def _replace(spec: Spec, **changes: Any) -> Spec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


# -- normalisation ----------------------------------------------------------------------------
def _canonical_match_spec(spec: str) -> str:
    """rattler's normal form of a match spec (``numpy >=1``), or the stripped text if invalid."""
    if not isinstance(spec, str):
        return repr(spec)
    try:
        import rattler

        return str(rattler.MatchSpec(spec.strip()))
    except Exception:
        return " ".join(spec.split())


def _canonical_requirement(requirement: str) -> str:
    """PEP 503 name, sorted extras, PEP 440-normal sorted specifiers, marker; text if invalid."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not isinstance(requirement, str):
        return repr(requirement)
    try:
        req = Requirement(requirement)
    except InvalidRequirement:
        return " ".join(requirement.split())
    out = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    if req.url:
        out += f" @ {req.url}"
    out += ",".join(sorted(_canonical_specifier(s.operator, s.version) for s in req.specifier))
    if req.marker:
        out += f"{' ' if req.url else ''}; {req.marker}"
    return out


def _canonical_specifier(operator: str, version: str) -> str:
    from packaging.version import InvalidVersion, Version

    if operator == "===":
        return operator + version
    wildcard = version.endswith(".*")
    try:
        normal = str(Version(version[:-2] if wildcard else version))
    except InvalidVersion:
        return operator + version
    return operator + normal + (".*" if wildcard else "")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _unique_by(items: Iterable[str], key: Any) -> list[str]:
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return [seen[k] for k in sorted(seen)]
