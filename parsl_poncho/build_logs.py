"""Logs of failed builds, kept in the cache so that a build error shows its cause.

A BuildError reaching an executor future (and Parsl's log) used to say "see the log tail"
with no tail and no log. :func:`with_build_log` writes the failing tool's whole output to
``<cache>/failed/<hash>-<time>.log`` (atomically) and gives back the error with its last lines
and that path in its message. Only the newest :data:`KEEP` logs stay; ``EnvStore.prune`` (and
``parsl-poncho cache prune``) also drops logs older than :data:`MAX_AGE_DAYS`.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path

from parsl_poncho.build.diagnose import DISK_FULL, cause_of, free_space
from parsl_poncho.errors import BuildError, PonchoError

#: Failed-build logs kept; older ones are removed when a new one is written.
KEEP = 20
#: Days a failed-build log is kept by prune.
MAX_AGE_DAYS = 7
#: Lines of the tool's output shown in the error message itself.
SHOWN_LINES = 15


def failed_dir(cache_dir: Path) -> Path:
    """Where failed builds' logs live in a cache."""
    return Path(cache_dir) / "failed"


def with_build_log(exc: BaseException, cache_dir: Path, env_hash: str) -> BaseException:
    """``exc`` with the tool's last lines and its kept log's path in the message.

    Anything but a BuildError, and a BuildError that already has a log path, is returned as
    it is. If the log cannot be written the message still gets the tail.
    """
    if not isinstance(exc, BuildError) or exc.log_path is not None:
        return exc
    text = exc.log or exc.log_tail
    path = None
    if text:
        with contextlib.suppress(OSError):
            path = _write_log(failed_dir(cache_dir), env_hash, exc, text)
    message = str(exc)
    if cause_of(f"{message}\n{exc.log_tail}") == "disk_full" and DISK_FULL not in message:
        message = (f"{exc.step or 'build'}: {DISK_FULL} while building env {env_hash[:12]} "
                   f"({free_space([cache_dir])} once its files were removed): free space "
                   "there, or set cache_dir / $PARSL_PONCHO_CACHE to a larger disk. The tool "
                   f"said: {message}")
    shown = exc.log_tail.rstrip().splitlines()[-SHOWN_LINES:]
    if shown:
        step = exc.step or "build"
        message += f"\n  last lines of the {step} step's output:\n" + "\n".join(
            f"    {line}" for line in shown)
    if path is not None:
        message += f"\n  full log: {path}"
    error = BuildError(message, step=exc.step, package=exc.package, log_tail=exc.log_tail,
                       log=exc.log, log_path=str(path) if path else None)
    error.__cause__ = exc.__cause__ if exc.__cause__ is not None else exc  # the root cause
    return error


def as_build_error(exc: BaseException, env_hash: str) -> BaseException:
    """A BuildError for an unexpected exception in a build (PonchoErrors pass through)."""
    if isinstance(exc, PonchoError):
        return exc
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    error = BuildError(f"building environment {env_hash} failed: {type(exc).__name__}: {exc}",
                       step="store", log_tail=tail)
    error.__cause__ = exc
    return error


def prune_failed_logs(cache_dir: Path, *, keep: int = KEEP,
                      max_age_days: float | None = MAX_AGE_DAYS) -> list[Path]:
    """Remove failed-build logs beyond the newest ``keep`` and older than ``max_age_days``."""
    logs = sorted(failed_dir(cache_dir).glob("*.log"), key=_mtime, reverse=True)
    cutoff = time.time() - max_age_days * 86400 if max_age_days is not None else None
    removed = []
    for index, path in enumerate(logs):
        if index >= keep or (cutoff is not None and _mtime(path) < cutoff):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _write_log(directory: Path, env_hash: str, exc: BuildError, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = directory / f"{env_hash[:16]}-{stamp}.log"
    header = f"# build of env {env_hash} failed at step {exc.step}: {exc}\n"
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(header + text.rstrip() + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    prune_failed_logs(directory.parent, max_age_days=None)
    return path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
