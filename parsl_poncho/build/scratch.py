"""Scratch build directories: one per build, locked while in use, reaped after a crash.

A build holds an exclusive flock on ``<scratch>/.lock`` for its whole life. A build killed with
SIGKILL cannot remove its directory, but it loses the lock, so the next build in the same
workdir removes it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PREFIX = "build-"
LOCK_NAME = ".lock"
#: A directory younger than this without a lock file may be a build that is just starting.
GRACE_SECONDS = 120.0


@contextmanager
def scratch_dir(workdir: Path, *, keep: bool = False) -> Iterator[Path]:
    """A new locked scratch dir under ``workdir``, removed on exit unless ``keep``."""
    workdir.mkdir(parents=True, exist_ok=True)
    reap_stale(workdir)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=workdir))
    fd = os.open(path / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def reap_stale(workdir: Path) -> list[Path]:
    """Remove scratch dirs whose build is gone (lock free, or no lock and older than grace)."""
    removed = []
    for path in workdir.glob(f"{PREFIX}*"):
        if not path.is_dir() or path.is_symlink():
            continue
        lock = path / LOCK_NAME
        if not lock.exists():
            try:
                young = time.time() - path.stat().st_mtime < GRACE_SECONDS
            except OSError:
                continue
            if young:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live build holds it
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed
