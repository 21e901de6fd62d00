"""Environment specs: the PONCHO JSON formats in and out, validation, canonical form and hash.

A :class:`Spec` is read from cctools' PONCHO JSON (current format: ``conda.dependencies`` with a
``{"pip": [...]}`` item; old format: ``conda.packages`` plus a top-level ``pip`` list), from a
conda ``environment.yml`` or from a pip ``requirements.txt``. Validation runs the JSON Schema in
``parsl_poncho/schema/spec.schema.json`` and semantic checks (conda match specs parsed by
py-rattler, pip requirements by ``packaging``, git remotes/refs, URLs), collects every problem and
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

import difflib
import functools
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from parsl_poncho.errors import SpecError
from parsl_poncho.nesting import MAX_DEPTH, first_too_deep, json_text_too_deep, yaml_text_too_deep

#: Bumped whenever the builder changes what a given spec produces; part of every hash.
BUILD_FORMAT_VERSION = 1

#: Top-level key holding parsl-poncho's extensions; cctools' poncho ignores unknown keys.
EXTENSION_KEY = "x-parsl-poncho"

HttpType = Literal["file", "tar"]

#: Channels used when a spec names none.
DEFAULT_CHANNELS: tuple[str, ...] = ("conda-forge",)

_TOP_LEVEL_SECTIONS = ("conda", "pip", "git", "http", EXTENSION_KEY)
_HTTP_SCHEMES = ("http", "https", "file")
# git's "<transport>::<address>" remote-helper syntax (ext::, fd::, ...) runs programs.
_GIT_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_GIT_REFUSED_SCHEMES = ("ext", "fd")
_GIT_REF = re.compile(r"^[A-Za-z0-9_./@+-]+$")

PathParts = tuple[Union[str, int], ...]


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_index_urls", tuple(self.extra_index_urls))
        object.__setattr__(self, "find_links", tuple(self.find_links))

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
                raise _spec_error(problems, source)
            return _build_spec(data)
        except RecursionError as exc:  # a last resort: validate_dict refuses deep input first
            raise _spec_error([_TOO_DEEP_FOR_PYTHON], source) from exc

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
        text = _read_text(path)
        try:
            data = decode_json(text, source=str(path))
        except json.JSONDecodeError as exc:
            problem = (
                f"line {exc.lineno} column {exc.colno}: {exc.msg} (not valid JSON; name the file "
                "*.yml or *requirements*.txt for those formats)"
            )
            raise _spec_error([problem], str(path)) from exc
        spec = cls.from_dict(data, source=str(path))
        return spec.with_local_paths_relative_to(path.parent)

    @classmethod
    def from_environment_yml(cls, path: str | Path) -> Spec:
        """Read a conda ``environment.yml`` (``name``/``prefix`` are ignored).

        Pip items may carry ``--index-url``/``--extra-index-url``/``--find-links`` and ``-r``
        lines, as conda allows.
        :raises SpecError: unreadable file, bad YAML or invalid content.
        """
        import yaml

        path = Path(path)
        text = _read_text(path)
        try:
            too_deep = yaml_text_too_deep(text)
            if too_deep:
                where = "line {} column {}".format(*too_deep)
                raise _spec_error([_too_deep_problem(where)], str(path))
            data = yaml.safe_load(text)
        except RecursionError as exc:
            raise _spec_error([_TOO_DEEP_FOR_PYTHON], str(path)) from exc
        except yaml.YAMLError as exc:
            raise SpecError(
                f"{str(path)!r} is not valid YAML: {exc}; fix the syntax",
                problems=[str(exc)],
                source=str(path),
            ) from exc
        return _spec_from_environment(data, path)

    @classmethod
    def from_requirements(cls, path: str | Path, *, python: str | None = None) -> Spec:
        """Read a pip ``requirements.txt``; the conda part is ``python=<python>`` and ``pip``.

        Supports ``-i/--index-url``, ``--extra-index-url``, ``-f/--find-links`` and
        ``-r/--requirement`` lines. ``python`` defaults to the running interpreter's X.Y.Z.
        :raises SpecError: unreadable file or invalid/unsupported lines.
        """
        path = Path(path)
        problems: list[str] = []
        reqs, options = _parse_requirement_lines(_read_lines(path), path, problems)
        data = {
            "conda": {
                "channels": list(DEFAULT_CHANNELS),
                "dependencies": [f"python={python or _python_version()}", "pip", {"pip": reqs}],
            },
        }
        if options:
            data[EXTENSION_KEY] = {"pip_options": options}
        problems.extend(validate_dict(data))
        if problems:
            raise _spec_error(problems, str(path))
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
            ext["pip_options"] = pip_options
        return ext

    def canonical_dict(self) -> dict[str, Any]:
        """The normalised content that identifies the environment (see module docstring)."""
        opts = self.pip_options
        return {
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
        raise _spec_error([_too_deep_problem("line {} column {}".format(*too_deep))], source)
    try:
        return json.loads(text)
    except RecursionError as exc:  # a last resort: the scan above refuses deep text first
        raise _spec_error([_TOO_DEEP_FOR_PYTHON], source) from exc


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


# -- validation -------------------------------------------------------------------------------
def validate_dict(data: Any) -> list[str]:
    """Every problem in a decoded spec, as ``"json.path: what is wrong"`` (empty when valid)."""
    too_deep = first_too_deep(data)
    if too_deep is not None:  # before anything that recurses (jsonschema, repr)
        return [_too_deep_problem(_short_path(too_deep))]
    if not isinstance(data, Mapping):
        return [f"(spec): must be a JSON object, got {type(data).__name__} {_short(data)}"]
    problems: list[tuple[PathParts, str]] = list(_schema_problems(data))
    problems.extend(_semantic_problems(data))
    problems.sort(
        key=lambda item: [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in item[0]]
    )
    seen: set[str] = set()
    out = []
    for parts, msg in problems:
        line = f"{format_path(parts)}: {msg}"
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def format_path(parts: Iterable[str | int]) -> str:
    """``("conda", "dependencies", 3)`` -> ``"conda.dependencies[3]"``; empty -> ``"(spec)"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(spec)"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema for specs (``parsl_poncho/schema/spec.schema.json``)."""
    schema_path = Path(__file__).with_name("schema") / "spec.schema.json"
    return json.loads(schema_path.read_text(encoding="utf-8"))


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _schema_problems(data: Mapping[str, Any]) -> Iterator[tuple[PathParts, str]]:
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        yield from _explain_schema_error(error)


def _explain_schema_error(error: Any) -> Iterator[tuple[PathParts, str]]:
    parts: PathParts = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for key in error.instance:
            if key in known or any(re.search(p, str(key)) for p in patterns):
                continue
            yield parts, _unknown_key_message(key, known, top_level=not parts)
        return
    friendly = error.schema.get("x-error") if isinstance(error.schema, Mapping) else None
    if friendly and error.validator == "pattern":
        yield parts, f"{_short(error.instance)} {friendly}"
    elif error.validator == "required":
        yield parts, f"{error.message}; add it"
    else:
        yield parts, _short(error.message, 300, quote=False)  # it quotes the whole instance


def _unknown_key_message(key: Any, known: Sequence[str], *, top_level: bool) -> str:
    what = "section" if top_level else "key"
    msg = f"unknown {what} {key!r}"
    if top_level and key == "pinned":
        return msg + " (cctools' 'pinned' is not supported: pin versions in conda.dependencies)"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return msg + f" (did you mean {close[0]!r}?)"
    return msg + f" (expected one of: {', '.join(sorted(known))})"


def _semantic_problems(data: Mapping[str, Any]) -> Iterator[tuple[PathParts, str]]:
    conda = data.get("conda")
    if isinstance(conda, Mapping):
        if "dependencies" in conda and "packages" in conda:
            yield (
                ("conda",),
                (
                    "has both 'dependencies' (current format) and 'packages' (old format); "
                    "use one of them"
                ),
            )
        yield from _conda_list_problems(conda.get("dependencies"), ("conda", "dependencies"))
        yield from _conda_list_problems(conda.get("packages"), ("conda", "packages"))
    yield from _pip_list_problems(data.get("pip"), ("pip",))
    yield from _git_problems(data.get("git"))
    yield from _http_problems(data.get("http"))
    yield from _extension_problems(data.get(EXTENSION_KEY))
    for key in data:
        if key != EXTENSION_KEY and difflib.get_close_matches(key, [EXTENSION_KEY], cutoff=0.8):
            yield (key,), f"unknown extension; did you mean {EXTENSION_KEY!r}?"
    git, http = data.get("git"), data.get("http")
    if isinstance(git, Mapping) and isinstance(http, Mapping):
        for var in sorted(set(git) & set(http)):
            yield ("http", var), f"variable {var!r} is also defined under 'git'; rename one"


def _conda_list_problems(items: Any, parts: PathParts) -> Iterator[tuple[PathParts, str]]:
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            error = match_spec_error(item)
            if error:
                yield parts + (i,), f"{_short(item, 200)} is not a valid match spec ({error})"
        elif isinstance(item, Mapping):
            yield from _pip_list_problems(item.get("pip"), parts + (i, "pip"))


def _pip_list_problems(items: Any, parts: PathParts) -> Iterator[tuple[PathParts, str]]:
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            error = requirement_error(item)
            if error:
                yield parts + (i,), f"{_short(item, 200)} is not a valid pip requirement ({error})"


def _git_problems(git: Any) -> Iterator[tuple[PathParts, str]]:
    if not isinstance(git, Mapping):
        return
    for var, entry in git.items():
        if not isinstance(entry, Mapping):
            continue
        remote, ref = entry.get("remote"), entry.get("ref")
        if isinstance(remote, str):
            error = git_remote_error(remote)
            if error:
                yield ("git", var, "remote"), f"{remote!r} is refused: {error}"
        if isinstance(ref, str):
            error = git_ref_error(ref)
            if error:
                yield ("git", var, "ref"), f"{ref!r} is refused: {error}"


def _http_problems(http: Any) -> Iterator[tuple[PathParts, str]]:
    if not isinstance(http, Mapping):
        return
    for var, entry in http.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
            continue
        url = entry["url"]
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _HTTP_SCHEMES:
            yield (
                ("http", var, "url"),
                (f"{url!r} is not a URL with one of the schemes {', '.join(_HTTP_SCHEMES)}"),
            )


def _extension_problems(ext: Any) -> Iterator[tuple[PathParts, str]]:
    if not isinstance(ext, Mapping):
        return
    local = ext.get("local")
    entries: list[tuple[PathParts, Any, Any]] = []
    if isinstance(local, Mapping):
        for name, entry in local.items():
            if isinstance(entry, Mapping) and "name" in entry and entry["name"] != name:
                yield (
                    (EXTENSION_KEY, "local", name, "name"),
                    (
                        f"{entry['name']!r} differs from its key {name!r}; drop 'name' or make "
                        "them equal"
                    ),
                )
            entries.append(((EXTENSION_KEY, "local", name), name, entry))
    elif isinstance(local, list):
        for i, entry in enumerate(local):
            name = entry.get("name") if isinstance(entry, Mapping) else None
            entries.append(((EXTENSION_KEY, "local", i), name, entry))
    seen: dict[str, Any] = {}
    for parts, name, entry in entries:
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            continue
        sha = str(entry.get("sha256", "")).lower()
        if name in seen and seen[name] != sha:
            yield parts, f"local code {name!r} is listed twice with different sha256"
        seen[name] = sha


# -- single-item checks (public: the builder and CLI reuse them) -------------------------------
def match_spec_error(spec: str) -> str | None:
    """Why ``spec`` is not a conda match spec (py-rattler's parser), or None when it is."""
    import rattler

    try:
        rattler.MatchSpec(spec.strip())
    except Exception as exc:  # rattler raises its own InvalidMatchSpecError
        return str(exc).splitlines()[0]
    return None


def requirement_error(requirement: str) -> str | None:
    """Why ``requirement`` is not a PEP 508 requirement, or None when it is."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(requirement)
    except InvalidRequirement as exc:
        return "PEP 508: " + str(exc).splitlines()[0]
    return None


def git_remote_error(remote: str) -> str | None:
    """Why cloning ``remote`` is refused (option-like, ext::/fd:: transports), or None."""
    if remote != remote.strip() or any(ord(ch) < 32 for ch in remote):
        return "it contains surrounding whitespace or control characters"
    if remote.startswith("-"):
        return "it starts with '-' and could be read by git as an option"
    if _GIT_HELPER.match(remote):
        helper = remote.split("::", 1)[0]
        return f"the {helper!r}:: remote-helper transport can run commands; use https:// or ssh://"
    scheme = urlsplit(remote).scheme.lower()
    if scheme in _GIT_REFUSED_SCHEMES:
        return f"the {scheme!r} transport can run commands; use https:// or ssh://"
    if "://" in remote:
        host = urlsplit(remote).netloc.rsplit("@", 1)[-1]
        if host.startswith("-"):
            return "its host starts with '-' and could be read by ssh as an option"
    return None


def git_ref_error(ref: str) -> str | None:
    """Why ``ref`` is not an acceptable git ref (branch, tag, commit), or None."""
    if ref.startswith("-"):
        return "it starts with '-' and could be read by git as an option"
    if not _GIT_REF.match(ref):
        return "a ref may only contain letters, digits and . _ / @ + -"
    if ".." in ref or "@{" in ref or "//" in ref:
        return "a ref may not contain '..', '@{' or '//'"
    if ref.endswith((".", "/", ".lock")) or ref.startswith("/"):
        return "a ref may not start with '/' or end with '.', '/' or '.lock'"
    return None


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


# -- environment.yml and requirements.txt ------------------------------------------------------
def _spec_from_environment(data: Any, path: Path) -> Spec:
    source = str(path)
    if not isinstance(data, Mapping):
        raise _spec_error([f"(spec): must be a mapping, got {type(data).__name__}"], source)
    problems: list[str] = []
    for key in data:
        if key not in ("name", "prefix", "channels", "dependencies"):
            known = ["name", "prefix", "channels", "dependencies"]
            problems.append(f"{key}: " + _unknown_key_message(key, known, top_level=False))
    deps = data.get("dependencies") or []
    options: dict[str, Any] = {}
    conda_deps: list[Any] = []
    if isinstance(deps, list):
        for i, item in enumerate(deps):
            if isinstance(item, Mapping) and isinstance(item.get("pip"), list):
                lines = [str(x) for x in item["pip"]]
                reqs, opts = _parse_requirement_lines(
                    list(enumerate(lines, 1)), path, problems, where=f"dependencies[{i}].pip"
                )
                _merge_options(options, opts)
                conda_deps.append({"pip": reqs})
            else:
                conda_deps.append(item)
    else:
        conda_deps = deps  # let the schema report the type
    spec_dict: dict[str, Any] = {"conda": {"dependencies": conda_deps}}
    if "channels" in data:
        spec_dict["conda"]["channels"] = data["channels"]
    if options:
        spec_dict[EXTENSION_KEY] = {"pip_options": options}
    problems.extend(validate_dict(spec_dict))
    if problems:
        raise _spec_error(problems, source)
    return _build_spec(spec_dict)


_OPTION_ALIASES = {
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "-r": "--requirement",
    "--requirement": "--requirement",
}


def _parse_requirement_lines(
    lines: list[tuple[int, str]],
    path: Path,
    problems: list[str],
    *,
    where: str | None = None,
    depth: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """Requirements and pip options from requirements-file lines; problems are appended."""
    reqs: list[str] = []
    options: dict[str, Any] = {}
    for lineno, line in _logical_lines(lines):
        loc = f"{where}[{lineno - 1}]" if where else f"{path.name}:{lineno}"
        if not line.startswith("-"):
            if re.search(r"\s--?[A-Za-z]", line):
                problems.append(
                    f"{loc}: per-requirement options such as --hash are not supported in "
                    f"{line!r}; remove them"
                )
            else:
                reqs.append(line)
            continue
        match = re.match(r"^(-[^\s=]*)(?:[\s=]+(.*))?$", line)
        flag, value = (match.group(1), (match.group(2) or "").strip()) if match else (line, "")
        option = _OPTION_ALIASES.get(flag)
        if option is None and flag[:2] in _OPTION_ALIASES and flag[2:]:
            option, value = _OPTION_ALIASES[flag[:2]], flag[2:] + value  # -ihttps://...
        if option is None:
            problems.append(
                f"{loc}: option {flag!r} is not supported (supported: -i/--index-url, "
                "--extra-index-url, -f/--find-links, -r/--requirement); remove it"
            )
        elif not value:
            problems.append(f"{loc}: option {flag!r} needs a value")
        elif option == "--index-url":
            options["index_url"] = value
        elif option == "--extra-index-url":
            options.setdefault("extra_index_urls", []).append(value)
        elif option == "--find-links":
            options.setdefault("find_links", []).append(_relative_link(value, path))
        elif depth > 10:
            problems.append(f"{loc}: -r nesting deeper than 10 (a loop?)")
        else:
            included = path.parent / value
            sub_reqs, sub_opts = _parse_requirement_lines(
                _read_lines(included, problems, loc), included, problems, depth=depth + 1
            )
            reqs.extend(sub_reqs)
            _merge_options(options, sub_opts)
    return reqs, options


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations, drop comments and blank lines (pip's rules)."""
    buffer, start = "", 0
    for lineno, raw in lines:
        if not buffer:
            start = lineno
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        text = _COMMENT.split(buffer + raw, 1)[0].strip()
        buffer = ""
        if text:
            yield start, text
    if buffer.strip():
        yield start, buffer.strip()


# a '#' at the start or after a blank starts a comment; the lookbehind keeps the search linear
_COMMENT = re.compile(r"(?:^|(?<=\s))#")


def _relative_link(value: str, path: Path) -> str:
    """pip resolves a relative --find-links against the requirements file when it exists there."""
    if "://" in value or Path(value).is_absolute():
        return value
    candidate = path.parent / value
    return str(candidate.resolve()) if candidate.exists() else value


def _merge_options(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = value


def _read_lines(
    path: Path, problems: list[str] | None = None, loc: str | None = None
) -> list[tuple[int, str]]:
    try:
        return list(enumerate(_read_text(path).splitlines(), 1))
    except SpecError as exc:
        if problems is None:
            raise
        problems.append(f"{loc}: {exc}")
        return []


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"Cannot read spec file {str(path)!r}: {exc}; check the path and permissions",
            problems=[str(exc)],
            source=str(path),
        ) from exc


# -- errors -----------------------------------------------------------------------------------
def _spec_error(problems: list[str], source: str | None) -> SpecError:
    where = f" in {source}" if source else ""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    body = "\n".join(f"  - {p}" for p in problems)
    msg = f"Invalid environment spec{where} ({count}); fix them and retry:\n{body}"
    return SpecError(msg, problems=problems, source=source)


def _short(value: Any, limit: int = 60, *, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TOO_DEEP_FOR_PYTHON = (
    "(spec): nested too deeply for Python to read (RecursionError); a PONCHO spec is at most "
    f"{MAX_DEPTH} levels deep, remove the extra nesting"
)


def _too_deep_problem(where: str) -> str:
    return (
        f"{where}: nested more than {MAX_DEPTH} levels deep; a PONCHO spec is at most "
        f"{MAX_DEPTH} levels deep (a real one about 5): remove the extra nesting"
    )


def _short_path(parts: PathParts, shown: int = 6) -> str:
    """format_path of the first ``shown`` parts (keys cut to 40 characters), then '...'."""
    head = tuple(p if isinstance(p, int) else _short(p, 40, quote=False) for p in parts[:shown])
    return format_path(head) + ("..." if len(parts) > shown else "")
