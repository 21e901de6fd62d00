"""Local code of the user's (a module file or a package directory) copied into site-packages.

The files copied are those the analyzer hashed (:func:`parsl_poncho.codehash.list_code_files`),
and the copy is hashed again: code edited after its analysis fails the build instead of shipping
under the old content hash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from parsl_poncho.build._util import site_packages
from parsl_poncho.codehash import hash_files, list_code_files
from parsl_poncho.errors import BuildError


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
        _copy_local_code(site, item)
        copied.append(item.name)
    return copied


def _copy_local_code(site: Path, item: Any) -> Path:
    """Copy one LocalCode entry into ``site``, check the copy against ``item.sha256``.

    Nothing is left in ``site`` when the check fails. Returns the path copied to.
    """
    name = item.name
    source = Path(item.path).expanduser()
    if not name.isidentifier():
        raise _error(f"local code name {name!r} is not an importable name", name)
    if source.is_dir():
        kind, target = "package", site / name
    elif source.is_file():
        kind = "module"
        target = site / f"{name}.py" if source.suffix == ".py" else site / source.name
    else:
        raise _error(f"local code {name!r} not found at {str(source)!r}: the spec must be built "
                     "on the host that has the code", name)
    if target.exists():
        fix = "rename the local package" if kind == "package" else "rename it"
        raise _error(f"local {kind} {name!r} would overwrite {str(target)!r}, which an installed "
                     f"package already provides: {fix}", name)
    try:
        copies = _copy_files(source, target)
        actual = hash_files(copies)
    except OSError as exc:
        _remove(target)
        raise _error(f"cannot copy local {kind} {name!r} from {str(source)!r}: {exc}; fix the "
                     "file (a dangling symlink?) or its permissions", name) from exc
    if actual != str(item.sha256).lower():
        _remove(target)
        raise _error(
            f"local {kind} {name!r} ({str(source)!r}) changed on disk after it was analysed: "
            f"its files hash to {actual}, the spec says {item.sha256}. Submit the app again "
            "(the analysis notices edits within a second) or re-run poncho_package_analyze, so "
            "that the spec carries the new content",
            name,
        )
    return target


def _copy_files(source: Path, target: Path) -> list[tuple[str, Path]]:
    """Copy the code files of ``source`` (symlinks followed) to ``target``; (rel, copy) each."""
    files = list_code_files(source)
    if not source.is_dir():
        shutil.copy2(files[0].path, target)
        return [(files[0].rel, target)]
    target.mkdir()
    copies = []
    for file in files:
        dest = target.joinpath(*file.rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file.path, dest)
        copies.append((file.rel, dest))
    return copies


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


def _error(problem: str, name: str) -> BuildError:
    return BuildError(f"code: {problem}", step="code", package=name)
