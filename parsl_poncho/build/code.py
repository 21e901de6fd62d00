"""Local code of the user's (a module file or a package directory) copied into site-packages.

The files copied are those the analyzer hashed, and the copy is hashed again
(:func:`parsl_poncho.codehash.copy_checked`): code edited after its analysis fails the build
instead of shipping under the old content hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from parsl_poncho.build._util import site_packages
from parsl_poncho.codehash import copy_checked


def add_local_code(prefix: Path, local: Sequence[Any]) -> list[str]:
    """Copy each LocalCode entry into the env's site-packages; return the names copied.

    :raises BuildError: (step "code", package = the name) a name that is not importable, a
        source that is missing or unreadable, a target an installed package already provides,
        or content that no longer matches the entry's sha256.
    """
    if not local:
        return []
    site = site_packages(prefix)
    copied = []
    for item in local:
        copy_checked(item, site, taken=_overwrites)
        copied.append(item.name)
    return copied


def _overwrites(name: str, kind: str, target: Path) -> str:
    fix = "rename the local package" if kind == "package" else "rename it"
    return (f"local {kind} {name!r} would overwrite {str(target)!r}, which an installed "
            f"package already provides: {fix}")
