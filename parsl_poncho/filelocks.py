"""Files shared by concurrent processes on the submit host: flock-based locks, durable JSON.

The locks are ``flock(2)`` on a lock file that may be unlinked by whoever removes what it
guards: a process that locked a file unlinked meanwhile locks the new one instead, so a lock
never guards a name nobody else can see. Lock files are opened without following symlinks.

Example::

    with flock(locks / "abc.build", fcntl.LOCK_EX):       # blocks until held
        ...
    with try_flock(locks / "abc.use", fcntl.LOCK_EX) as got:  # never blocks
        if got:
            ...
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name (a directory: so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    """Open ``path`` for locking; never follows a symlink planted in the cache."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def flock(path: Path, mode: int) -> Iterator[None]:
    """Hold flock ``mode`` on ``path`` (blocking). Retries if the file was unlinked meanwhile."""
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, mode)
            if not _same_file(fd, path):
                continue  # a remover unlinked it after we opened it: lock the new file
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)


@contextlib.contextmanager
def try_flock(path: Path, mode: int, *, unlink: bool = False) -> Iterator[bool]:
    """Try flock ``mode | LOCK_NB``; yields whether it was acquired.

    With ``unlink``, the lock file is removed while still held, so waiters re-open a new one.
    """
    while True:
        fd = _open_lock(path)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            if not _same_file(fd, path):
                continue
            try:
                yield True
                if unlink:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)
