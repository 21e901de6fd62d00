"""Eviction and upkeep of the env cache: sizes, least-recently-used pruning, removal, and
clearing what dead builders left in ``staging/`` (the maintenance half of ``EnvStore``).

An entry in use (``EnvStore.use`` holds a shared flock on ``locks/<hash>.use``) is never
removed; a removed entry is first renamed into ``staging/trash-*`` so no reader sees it half
deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from parsl_poncho.build_logs import prune_failed_logs
from parsl_poncho.errors import StoreError
from parsl_poncho.filelocks import try_flock

if TYPE_CHECKING:
    from parsl_poncho.store import Env

HASH = re.compile(r"^[0-9a-f]{64}$")


class Eviction:
    """Mixed into ``EnvStore``, which provides the directories, ``lookup`` and ``_known``."""

    cache_dir: Path
    _envs: Path
    _locks: Path
    _staging: Path
    _known: dict

    def _lock_path(self, env_hash: str, kind: str) -> Path:
        return self._locks / f"{env_hash}.{kind}"

    def entries(self) -> list[Env]:
        """Every complete entry, least recently used first."""
        envs = [self.lookup(p.name) for p in self._entry_dirs()]
        found = [e for e in envs if e is not None]
        return sorted(found, key=lambda e: self.last_used(e.hash))

    def last_used(self, env_hash: str) -> float:
        """When the entry was last returned by get() or used (epoch seconds; 0 if unknown)."""
        entry = self._envs / env_hash
        for name in ("last-used", "entry.json"):
            try:
                return (entry / name).stat().st_mtime
            except OSError:
                continue
        return 0.0

    def entry_size(self, env_hash: str) -> int:
        """Bytes on disk of the entry directory (tarball + JSON files)."""
        return _tree_size(self._envs / env_hash)

    def total_size(self) -> int:
        """Bytes on disk of every entry."""
        return sum(_tree_size(p) for p in self._entry_dirs())

    def in_use(self, env_hash: str) -> bool:
        """True while some process holds :meth:`use` on the entry."""
        with try_flock(self._lock_path(env_hash, "use"), fcntl.LOCK_EX) as got:
            return not got

    def remove(self, env_hash: str) -> bool:
        """Delete the entry; False if absent.

        :raises StoreError: the entry is in use by some process.
        """
        if not HASH.match(env_hash):
            raise StoreError(f"{env_hash!r} is not an environment hash (64 hex digits)")
        with try_flock(self._lock_path(env_hash, "use"), fcntl.LOCK_EX, unlink=True) as got:
            if not got:
                raise StoreError(
                    f"environment {env_hash} is in use by a running process; retry when it ends"
                )
            target = self._envs / env_hash
            if not target.exists():
                return False
            self._discard(target)
        self._known.pop(env_hash, None)
        with try_flock(self._lock_path(env_hash, "build"), fcntl.LOCK_EX, unlink=True):
            pass  # drop the build lock file too, unless a build of this hash is running
        return True

    def prune(self, max_size: int, *, keep: tuple[str, ...] = ()) -> list[str]:
        """Evict least-recently-used entries not in use until at most ``max_size`` bytes remain.

        Also removes staging directories left by dead builders. Returns the evicted hashes.
        """
        self.clean_staging()
        prune_failed_logs(self.cache_dir)
        sizes = {p.name: _tree_size(p) for p in self._entry_dirs()}
        total = sum(sizes.values())
        evicted: list[str] = []
        for env_hash in sorted(sizes, key=self.last_used):
            if total <= max_size:
                break
            if env_hash in keep:
                continue
            try:
                removed = self.remove(env_hash)
            except StoreError:
                continue  # in use
            if removed:
                total -= sizes[env_hash]
                evicted.append(env_hash)
        return evicted

    def clean_staging(self) -> list[Path]:
        """Remove staging directories whose builder is gone (its build lock is free)."""
        removed = []
        for path in sorted(self._staging.glob("build-*")):
            env_hash = path.name[len("build-") :][:64]
            if not HASH.match(env_hash):
                continue
            with try_flock(self._lock_path(env_hash, "build"), fcntl.LOCK_EX) as got:
                if got and path.exists():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        for path in self._staging.glob("trash-*"):
            shutil.rmtree(path, ignore_errors=True)
        return removed

    # -- helpers -----------------------------------------------------------------------------------
    def _entry_dirs(self) -> list[Path]:
        try:
            return [p for p in self._envs.iterdir() if HASH.match(p.name)]
        except OSError:
            return []

    def _discard(self, target: Path) -> None:
        trash = Path(tempfile.mkdtemp(prefix=f"trash-{target.name}-", dir=self._staging))
        os.replace(target, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
