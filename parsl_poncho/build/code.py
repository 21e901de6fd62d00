"""Local code of the user's (a module file or a package directory) copied into site-packages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from parsl_poncho.build._util import site_packages
from parsl_poncho.errors import BuildError

# The same files the analyzer hashes into LocalCode.sha256: everything but bytecode.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def add_local_code(prefix: Path, local: Sequence[Any]) -> list[str]:
    """Copy each LocalCode entry into the env's site-packages; return the names copied."""
    if not local:
        return []
    site = site_packages(prefix)
    copied = []
    for item in local:
        source = Path(item.path).expanduser()
        name = item.name
        if not name.isidentifier():
            raise BuildError(
                f"code: local code name {name!r} is not an importable name",
                step="code",
                package=name,
            )
        if source.is_dir():
            target = site / name
            if target.exists():
                raise BuildError(
                    f"code: local package {name!r} would overwrite {str(target)!r}, which an "
                    "installed package already provides: rename the local package",
                    step="code",
                    package=name,
                )
            shutil.copytree(source, target, ignore=_IGNORE, symlinks=False)
        elif source.is_file():
            target = site / f"{name}.py" if source.suffix == ".py" else site / source.name
            if target.exists():
                raise BuildError(
                    f"code: local module {name!r} would overwrite {str(target)!r}: rename it",
                    step="code",
                    package=name,
                )
            shutil.copy2(source, target)
        else:
            raise BuildError(
                f"code: local code {name!r} not found at {str(source)!r}: the spec must be built "
                "on the host that has the code",
                step="code",
                package=name,
            )
        copied.append(name)
    return copied
