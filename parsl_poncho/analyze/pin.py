"""Turn the distributions and local code a function needs into a pinned Spec.

Always: conda ``python=<host X.Y.Z>`` and ``pip``, pip ``cloudpickle==<host version>`` (functions
and results cross with it). Each distribution is pinned to the submit host's version; by default
its dependencies too, read from the installed metadata (``Requires-Dist`` evaluated for this host,
conda records' ``depends``), so every worker gets exactly the submit host's versions.
"""

from __future__ import annotations

import platform
from typing import Iterable

from parsl_poncho.analyze.classify import Classifier, Distribution, normalize_name
from parsl_poncho.spec import LocalCode, Spec

DEFAULT_CHANNELS = ("conda-forge",)
_NEVER_PIP = frozenset({"pip", "python"})  # conda provides both; pip must not replace them
_CONDA_SKIP = frozenset({"python", "pip"})


def python_version() -> str:
    """The submit host's Python version, ``X.Y.Z``."""
    return platform.python_version()


def transitive(direct: Iterable[Distribution], classifier: Classifier) -> list[Distribution]:
    """``direct`` plus every installed dependency of them, each once (cycles handled)."""
    out: dict[tuple[str, str], Distribution] = {}
    pending: list[tuple[Distribution, tuple[str, ...]]] = [(d, ()) for d in direct]
    seen_extras: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        dist, extras = pending.pop()
        key = (dist.source, dist.name)
        if (dist.name, extras) in seen_extras:
            continue
        seen_extras.add((dist.name, extras))
        out.setdefault(key, dist)
        for dep, dep_extras in _dependencies(dist, extras, classifier):
            pending.append((dep, dep_extras))
    return list(out.values())


def _dependencies(dist: Distribution, extras: tuple[str, ...], classifier: Classifier
                  ) -> list[tuple[Distribution, tuple[str, ...]]]:
    found = []
    if dist.source == "conda":
        record = classifier.conda.by_name.get(dist.name)
        for text in record.depends if record is not None else ():
            name = text.split()[0] if text.split() else ""
            dep = classifier.conda.by_name.get(name)
            if dep is not None and not name.startswith("__"):
                found.append((dep.distribution(), ()))
        # Python packages from conda also declare pip metadata: follow it for pip-only deps.
    for name, dep_extras in classifier.dependencies(dist.name, extras):
        dep = classifier.distribution(name)
        if dep is not None:
            found.append((dep, dep_extras))
    return found


def pin_spec(
    distributions: Iterable[Distribution],
    local: Iterable[LocalCode],
    classifier: Classifier,
    *,
    pin_transitive: bool = True,
    channels: Iterable[str] | None = None,
    extra_requirements: Iterable[str] = (),
) -> Spec:
    """The Spec: python, pip, cloudpickle, then every distribution pinned.

    :param extra_requirements: pip requirement strings passed through unchanged (user overrides
        naming versions that are not installed here).
    """
    dists = list(distributions)
    cloudpickle = classifier.distribution("cloudpickle")
    if cloudpickle is not None:
        dists.append(cloudpickle)
    if pin_transitive:
        dists = transitive(dists, classifier)
    conda: dict[str, str] = {}
    pip: dict[str, str] = {}
    chans = list(channels) if channels is not None else list(DEFAULT_CHANNELS)
    for dist in dists:
        if dist.source == "conda":
            if dist.name not in _CONDA_SKIP:
                conda[dist.name] = dist.requirement()
            if dist.channel and dist.channel not in chans:
                chans.append(dist.channel)
    for dist in dists:
        if dist.source == "pip" and dist.name not in _NEVER_PIP and dist.name not in conda:
            pip[dist.name] = dist.requirement()
    for text in extra_requirements:
        pip.setdefault(normalize_name(_req_name(text)), text)
    return Spec(
        channels=tuple(chans),
        conda=(f"python={python_version()}", "pip", *sorted(conda.values())),
        pip=tuple(pip[k] for k in sorted(pip)),
        local=tuple(sorted(local, key=lambda code: code.name)),
    )


def _req_name(text: str) -> str:
    for i, ch in enumerate(text):
        if not (ch.isalnum() or ch in "-_."):
            return text[:i]
    return text
