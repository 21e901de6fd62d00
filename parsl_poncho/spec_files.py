"""The spec formats other than PONCHO JSON: conda's ``environment.yml`` and pip's requirements.

Each reader turns its file into validated PONCHO data (the dict :meth:`Spec.from_dict
<parsl_poncho.spec.Spec.from_dict>` reads): pip items and lines may carry
``-i/--index-url``, ``--extra-index-url``, ``-f/--find-links`` and ``-r/--requirement``, as pip
and conda allow; other options are refused by name, with the line they are on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from parsl_poncho.errors import SpecError
from parsl_poncho.nesting import yaml_text_too_deep
from parsl_poncho.spec_checks import (
    EXTENSION_KEY,
    TOO_DEEP_FOR_PYTHON,
    spec_error,
    too_deep_problem,
    unknown_key_message,
    validate_dict,
)


def environment_yml_data(path: Path) -> dict[str, Any]:
    """The validated PONCHO data of a conda ``environment.yml`` (``name``/``prefix`` ignored).

    :raises SpecError: unreadable file, bad YAML or invalid content.
    """
    import yaml

    source = str(path)
    text = read_text(path)
    try:
        too_deep = yaml_text_too_deep(text)
        if too_deep:
            raise spec_error([too_deep_problem("line {} column {}".format(*too_deep))], source)
        data = yaml.safe_load(text)
    except RecursionError as exc:
        raise spec_error([TOO_DEEP_FOR_PYTHON], source) from exc
    except yaml.YAMLError as exc:
        raise SpecError(
            f"{source!r} is not valid YAML: {exc}; fix the syntax",
            problems=[str(exc)],
            source=source,
        ) from exc
    if not isinstance(data, Mapping):
        raise spec_error([f"(spec): must be a mapping, got {type(data).__name__}"], source)
    problems: list[str] = []
    for key in data:
        if key not in _ENVIRONMENT_KEYS:
            known = list(_ENVIRONMENT_KEYS)
            problems.append(f"{key}: " + unknown_key_message(key, known, top_level=False))
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
        raise spec_error(problems, source)
    return spec_dict


def requirements_data(path: Path, *, python: str, channels: Sequence[str]) -> dict[str, Any]:
    """The validated PONCHO data of a pip requirements file: ``python=<python>``, ``pip`` and
    the requirements, from ``channels``.

    :raises SpecError: unreadable file or invalid/unsupported lines.
    """
    problems: list[str] = []
    reqs, options = _parse_requirement_lines(_read_lines(path), path, problems)
    data: dict[str, Any] = {
        "conda": {
            "channels": list(channels),
            "dependencies": [f"python={python}", "pip", {"pip": reqs}],
        },
    }
    if options:
        data[EXTENSION_KEY] = {"pip_options": options}
    problems.extend(validate_dict(data))
    if problems:
        raise spec_error(problems, str(path))
    return data


_ENVIRONMENT_KEYS = ("name", "prefix", "channels", "dependencies")
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
        return list(enumerate(read_text(path).splitlines(), 1))
    except SpecError as exc:
        if problems is None:
            raise
        problems.append(f"{loc}: {exc}")
        return []


def read_text(path: Path) -> str:
    """The text of spec file ``path``.

    :raises SpecError: it cannot be read as UTF-8 text.
    """
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"Cannot read spec file {str(path)!r}: {exc}; check the path and permissions",
            problems=[str(exc)],
            source=str(path),
        ) from exc
