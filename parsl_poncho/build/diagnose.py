"""Why a build tool failed, read from what it printed: disk full, network, permission, not found.

One pure function per question, so each error message gives the cause the tool reported
instead of a guess ("check the name" for a full disk sent users to the wrong place).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Literal, Sequence

Cause = Literal["disk_full", "network", "permission", "not_found"]

#: The words every out-of-space build error uses.
DISK_FULL = "ran out of disk space"

# What pip, uv, rattler, tar and Python print for each cause. A full disk wins wherever it
# shows (what follows it is a consequence); otherwise the cause named last wins: pip and uv
# warn about retries and timeouts on the way, then end with the error that stopped them.
_PATTERNS: tuple[tuple[Cause, re.Pattern[str]], ...] = (
    ("disk_full", re.compile(r"No space left on device|os error 28\b|Errno 28\b"
                             r"|Disk quota exceeded|os error 122\b|Errno 122\b", re.I)),
    ("permission", re.compile(r"Permission denied|os error 13\b|Errno 13\b|401 Unauthorized"
                              r"|403 Forbidden|(?:HTTP error|status code:?|Client Error:?) 40[13]",
                              re.I)),
    ("network", re.compile(
        r"Failed to establish a new connection|Connection refused|Name or service not known"
        r"|Temporary failure in name resolution|Max retries exceeded|Could not fetch URL"
        r"|error sending request|dns error|tcp connect error|Network is unreachable"
        r"|ConnectTimeout|timed out|Failed to fetch|connection reset", re.I)),
    ("not_found", re.compile(
        r"No matching distribution found|was not found in the package registry"
        r"|there is no version of|Could not find a version that satisfies|No solution found"
        r"|nothing provides|cannot be found|not found in", re.I)),
)

#: The index that has PyTorch's builds of one local label (``cpu``, ``cu121``, ``rocm6.1``).
PYTORCH_INDEX = "https://download.pytorch.org/whl/{label}"
_PYTORCH_LABEL = re.compile(r"^(cpu|cu\d+|rocm[\d.]+|xpu)$")


def cause_of(log: str) -> Cause | None:
    """Why a tool failed, from its output ``log``: disk full if it says so anywhere, else the
    cause whose message comes last; None if it names none."""
    last: dict[Cause, int] = {}
    for cause, pattern in _PATTERNS:
        for match in pattern.finditer(log):
            last[cause] = match.start()
    if "disk_full" in last:
        return "disk_full"
    return max(last, key=last.__getitem__) if last else None


def free_space(paths: Sequence[Path | str]) -> str:
    """``"/dir: 12 MB free"`` for each existing path's nearest existing directory."""
    seen: list[str] = []
    for path in paths:
        here = Path(path)
        while not here.exists() and here != here.parent:
            here = here.parent
        try:
            free = shutil.disk_usage(here).free
        except OSError:
            continue
        text = f"{here}: {free / 1e6:.0f} MB free"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def local_labels(requirements: Sequence[str]) -> dict[str, str]:
    """{requirement: label} for each ``name==version+label`` pin."""
    from packaging.requirements import InvalidRequirement, Requirement

    found: dict[str, str] = {}
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        for spec in requirement.specifier:
            if spec.operator in ("==", "===") and "+" in spec.version:
                found[text] = spec.version.partition("+")[2]
    return found


def local_label_hint(requirement: str, label: str, *, hermetic: bool = False) -> str:
    """Where builds with a local version label come from, and the option that adds the index."""
    name = re.split(r"[=<>!~ ;\[]", requirement, maxsplit=1)[0]
    if name.lower().startswith("torch") and _PYTORCH_LABEL.match(label):
        index = PYTORCH_INDEX.format(label=label)
        where = f"PyTorch publishes its +{label} builds on {index}"
    else:
        index = "URL"
        where = (f"builds with a local version label (+{label}) are published on their "
                 "maker's own index or as wheel files, not on PyPI")
    return (f"{requirement!r} has the local version label +{label}, and no index in use has "
            f"that build: {where}. Add that index: PonchoExecutor(pip_sources=PipSources("
            f"extra_index_urls=({index!r},))), or `poncho_package_create --extra-index-url "
            f"{index}`, or put it in your pip configuration (PIP_EXTRA_INDEX_URL or pip.conf), "
            "which builds follow unless they are hermetic"
            + (" (this build is: PipSources.hermetic() or --hermetic ignored that "
               "configuration)" if hermetic else "")
            + ". A build without the label would be another program (a CUDA torch is several "
            "GB), so it is not tried instead")


def writable_problem(path: Path | str) -> str | None:
    """A sentence when ``path`` (or its nearest existing parent) is not writable, else None."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    if os.access(here, os.W_OK):
        return None
    return f"{here} is not writable by this user"
