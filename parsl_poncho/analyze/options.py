"""The Analyzer's options checked: names of modules and distributions, ``pkg_mapping``.

Every problem is collected, so that one :class:`~parsl_poncho.errors.AnalysisOptionError` can
list them all; a distribution name must be installed on this host (it is pinned from there),
unless a version makes it a requirement passed through unchecked.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from parsl_poncho.analyze.classify import Classifier, Distribution, normalize_name

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DIST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


def check_mapping(mapping: Any, classifier: Classifier, problems: list[str]
                  ) -> dict[str, Distribution | str]:
    """``pkg_mapping`` checked: import name -> the installed Distribution, or a requirement
    with a version passed through; ``problems`` gets what is wrong with the rest."""
    resolved_mapping: dict[str, Distribution | str] = {}
    if mapping is None:
        return resolved_mapping
    if not isinstance(mapping, Mapping):
        problems.append(f"pkg_mapping must be a dict of import name -> distribution, got "
                        f"{type(mapping).__name__} {mapping!r}")
        return resolved_mapping
    for key, value in mapping.items():
        if not isinstance(key, str) or not MODULE_NAME.match(key):
            problems.append(f"pkg_mapping key {key!r} is not a module name like 'cv2' or "
                            "'google.protobuf'")
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(f"pkg_mapping[{key!r}] is {value!r}: it must be a distribution "
                            "name (a string), e.g. 'opencv-python'")
            continue
        resolved = resolve_dist("pkg_mapping", key, value.strip(), classifier, problems)
        if resolved is not None:
            resolved_mapping[key] = resolved
    return resolved_mapping


def resolve_dist(option: str, key: str, value: str, classifier: Classifier,
                 problems: list[str]) -> Distribution | str | None:
    """The installed distribution ``value`` names, ``value`` itself if it is a requirement
    with a version or URL, or None (then ``problems`` says why)."""
    if not _DIST_NAME.match(value):
        if any(ch in value for ch in "=<>~@"):
            return value  # a requirement with a version or URL: passed through
        problems.append(f"{option}: {value!r} is not a distribution name or requirement")
        return None
    dist = classifier.distribution(value)
    if dist is not None:
        return dist
    what = f"maps {key!r} to {value!r}" if option == "pkg_mapping" else f"names {value!r}"
    hint = did_you_mean(value)
    problems.append(
        f"{option} {what}, which is not installed on this host (neither importlib.metadata "
        f"nor {classifier.conda_prefix}/conda-meta know it){hint}; install it, fix the "
        f"name, or give a version to pass it through unchecked, e.g. '{value}==1.0'")
    return None


def check_names(option: str, values: Any, problems: list[str], modules: bool = True
                ) -> tuple[str, ...]:
    """The names in ``values`` (module names when ``modules``); ``problems`` gets the rest."""
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
        elif modules and not MODULE_NAME.match(item):
            problems.append(f"{option}[{n}] is {item!r}, not a module name like 'numpy' or "
                            "'scipy.stats'")
        else:
            out.append(item.strip())
    return tuple(out)


def did_you_mean(name: str) -> str:
    """`` (did you mean 'NAME'?)`` for the installed distribution closest to ``name``, or ""."""
    import importlib.metadata as metadata

    names = {normalize_name(d.metadata["Name"] or "") for d in metadata.distributions()}
    close = difflib.get_close_matches(normalize_name(name), sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
