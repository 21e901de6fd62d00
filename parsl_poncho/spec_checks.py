"""Validation of decoded specs: every problem, each named by its JSON path.

:func:`validate_dict` runs the JSON Schema in ``parsl_poncho/schema/spec.schema.json`` and the
semantic checks the schema cannot express: conda match specs parsed by py-rattler, pip
requirements by ``packaging``, git remotes and refs that could run commands, URL schemes, local
code listed twice. The single-item checks (:func:`match_spec_error`, :func:`git_remote_error`,
...) are public: the builder reuses the git checks. :func:`spec_error` words one
:class:`~parsl_poncho.errors.SpecError` for a list of problems.

Example::

    >>> validate_dict({"conda": {"dependencies": ["numpy >=>1"]}})[0][:38]
    "conda.dependencies[0]: 'numpy >=>1' is"
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

from parsl_poncho.errors import SpecError
from parsl_poncho.nesting import MAX_DEPTH, first_too_deep

#: Top-level key holding parsl-poncho's extensions; cctools' poncho ignores unknown keys.
EXTENSION_KEY = "x-parsl-poncho"

_HTTP_SCHEMES = ("http", "https", "file")
# git's "<transport>::<address>" remote-helper syntax (ext::, fd::, ...) runs programs.
_GIT_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_GIT_REFUSED_SCHEMES = ("ext", "fd")
_GIT_REF = re.compile(r"^[A-Za-z0-9_./@+-]+$")

PathParts = tuple[Union[str, int], ...]


def validate_dict(data: Any) -> list[str]:
    """Every problem in a decoded spec, as ``"json.path: what is wrong"`` (empty when valid)."""
    too_deep = first_too_deep(data)
    if too_deep is not None:  # before anything that recurses (jsonschema, repr)
        return [too_deep_problem(_short_path(too_deep))]
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
            yield parts, unknown_key_message(key, known, top_level=not parts)
        return
    friendly = error.schema.get("x-error") if isinstance(error.schema, Mapping) else None
    if friendly and error.validator == "pattern":
        yield parts, f"{_short(error.instance)} {friendly}"
    elif error.validator == "required":
        yield parts, f"{error.message}; add it"
    else:
        yield parts, _short(error.message, 300, quote=False)  # it quotes the whole instance


def unknown_key_message(key: Any, known: Sequence[str], *, top_level: bool) -> str:
    """What is wrong with ``key``, with the closest of ``known`` when one is close."""
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


# -- single-item checks (public: the builder reuses the git ones) ------------------------------
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


# -- errors -----------------------------------------------------------------------------------
def spec_error(problems: list[str], source: str | None) -> SpecError:
    """One SpecError listing ``problems`` (from ``source``, a file name, when known)."""
    where = f" in {source}" if source else ""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    body = "\n".join(f"  - {p}" for p in problems)
    msg = f"Invalid environment spec{where} ({count}); fix them and retry:\n{body}"
    return SpecError(msg, problems=problems, source=source)


def _short(value: Any, limit: int = 60, *, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: The problem when Python itself could not recurse deep enough to read the input.
TOO_DEEP_FOR_PYTHON = (
    "(spec): nested too deeply for Python to read (RecursionError); a PONCHO spec is at most "
    f"{MAX_DEPTH} levels deep, remove the extra nesting"
)


def too_deep_problem(where: str) -> str:
    """The problem of input nested deeper than a spec may be, at ``where``."""
    return (
        f"{where}: nested more than {MAX_DEPTH} levels deep; a PONCHO spec is at most "
        f"{MAX_DEPTH} levels deep (a real one about 5): remove the extra nesting"
    )


def _short_path(parts: PathParts, shown: int = 6) -> str:
    """format_path of the first ``shown`` parts (keys cut to 40 characters), then '...'."""
    head = tuple(p if isinstance(p, int) else _short(p, 40, quote=False) for p in parts[:shown])
    return format_path(head) + ("..." if len(parts) > shown else "")
