"""The content hash of local code: one definition for the analyzer and the builder.

The analyzer keys :class:`~parsl_poncho.spec.LocalCode` by :func:`hash_code`; the env build and
the code layer copy exactly the files :func:`list_code_files` lists and check the copy against
that hash (:func:`copy_checked`).

A module is its one file. A package directory is every file below it except ``__pycache__``
directories and ``*.pyc``/``*.pyo`` files; symbolic links are followed, files and directories
alike (the copy holds their content), except a directory link back to a directory above it (a
cycle), which is skipped. The hash covers each file's path relative to the package directory (a
module: its file name) and its bytes, in sorted path order.

Example::

    >>> import pathlib, tempfile
    >>> module = pathlib.Path(tempfile.mkdtemp(), "helper.py")
    >>> _ = module.write_text("X = 1\\n")
    >>> hash_code(module) == hash_files([("helper.py", module)])
    True
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from parsl_poncho.errors import BuildError

#: What the classifier compares to tell that files changed: (path, mtime_ns, size) per file.
Signature = tuple[tuple[str, int, int], ...]


class CodeFile(NamedTuple):
    """One file of local code: its path relative to the package (``/``-separated), where it
    is, and its ``os.stat`` result (symlinks followed)."""

    rel: str
    path: Path
    stat: os.stat_result


def list_code_files(path: Path) -> list[CodeFile]:
    """The files of a module file or package directory, sorted by relative path.

    :raises OSError: a file cannot be stat'ed (e.g. a dangling symlink).
    """
    path = Path(path)
    if not path.is_dir():
        return [CodeFile(path.name, path, path.stat())]
    out = []
    chains = {str(path): frozenset({os.path.realpath(path)})}
    for root, dirs, files in os.walk(path, followlinks=True):
        chain = chains.pop(root)
        kept = []
        for name in sorted(dirs):
            if name == "__pycache__":
                continue
            real = os.path.realpath(os.path.join(root, name))
            if real not in chain:  # a link to a directory above this one would never end
                kept.append(name)
                chains[os.path.join(root, name)] = chain | {real}
        dirs[:] = kept
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                file = Path(root, name)
                out.append(CodeFile(file.relative_to(path).as_posix(), file, file.stat()))
    out.sort(key=lambda item: item.rel)
    return out


def hash_files(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 hex over (relative path, bytes) of each file, in the order given."""
    digest = hashlib.sha256()
    for rel, file in files:
        name = rel.encode()
        data = Path(file).read_bytes()
        digest.update(b"%d:%s\0%d\0" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def hash_code(path: Path) -> str:
    """The content hash of a module file or package directory (``LocalCode.sha256``)."""
    return hash_files((f.rel, f.path) for f in list_code_files(path))


def stat_signature(files: Iterable[CodeFile]) -> Signature:
    """(path, mtime_ns, size) of each file: unchanged while the files are (cheap to compare)."""
    return tuple((str(f.path), f.stat.st_mtime_ns, f.stat.st_size) for f in files)


def code_signature(path: Path) -> Signature:
    """The stat signature of a module file or package directory now."""
    return stat_signature(list_code_files(path))


def copy_checked(item: Any, root: Path, *, taken: Callable[[str, str, Path], str]) -> Path:
    """Copy LocalCode ``item`` under ``root`` as the module or package it is, and check the
    copy against ``item.sha256``; nothing is left under ``root`` when that fails. Returns the
    path copied to.

    :raises BuildError: (step "code", package = the name) a name that is not importable, a
        source that is missing or unreadable, a target that exists (``taken(name, kind, target)``
        says what is wrong with that), or content that no longer matches the entry's sha256:
        code edited after its analysis must not ship under the old content hash.
    """
    name, source = item.name, Path(item.path).expanduser()
    if not name.isidentifier():
        raise _code_error(f"local code name {name!r} is not an importable name", name)
    if source.is_dir():
        kind, target = "package", root / name
    elif source.is_file():
        kind = "module"
        target = root / (f"{name}.py" if source.suffix == ".py" else source.name)
    else:
        raise _code_error(f"local code {name!r} not found at {str(source)!r}: the spec must be "
                          "built on the host that has the code", name)
    if target.exists():
        raise _code_error(taken(name, kind, target), name)
    try:
        actual = hash_files(_copy_files(source, target))
    except OSError as exc:
        _remove(target)
        raise _code_error(f"cannot copy local {kind} {name!r} from {str(source)!r}: {exc}; fix "
                          "the file (a dangling symlink?) or its permissions", name) from exc
    if actual != str(item.sha256).lower():
        _remove(target)
        raise _code_error(
            f"local {kind} {name!r} ({str(source)!r}) changed on disk after it was analysed: "
            f"its files hash to {actual}, the spec says {item.sha256}. Submit the app again "
            "(the analysis notices edits within a second) or re-run poncho_package_analyze, so "
            "that the spec carries the new content", name)
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


def _code_error(problem: str, name: str) -> BuildError:
    return BuildError(f"code: {problem}", step="code", package=name)
