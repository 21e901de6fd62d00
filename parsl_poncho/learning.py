"""Learning at run time what analysis cannot see: modules a call failed to import on a worker.

The runner records every module a call tried and failed to import (``misses``, sent back with
the result, or named on stderr when the call could not even be loaded). When a task fails,
:meth:`Learner.learn` turns the misses this host can import into distributions, as the
analysis would, and remembers them for the app; the executor then re-analyses the app with
those distributions added (:meth:`Learner.analyzer_for`), builds the new env and sends the
task again. What was learnt is stored in the env cache (``<cache>/learnt/<app key>.json``), so
the next run of the workflow builds the complete env the first time.

Bounds: an app learns each module once; a task is sent again at most :data:`MAX_LEARN_RETRIES`
times; a module this host does not have either is never learnt, so such a task fails at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import marshal
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from parsl_poncho.errors import PonchoError

logger = logging.getLogger(__name__)

#: Times one task is sent again because its app learnt something.
MAX_LEARN_RETRIES = 3

#: The runner's stderr line naming misses when the call could not be loaded at all.
_MISSES_LINE = re.compile(r"run_function\.py: modules not found: (.+)")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class AppIdentity:
    """Who learnt: module and qualified name of an app, and a hash of its code."""

    module: str
    qualname: str
    code_hash: str

    @classmethod
    def of(cls, func: Callable) -> AppIdentity:
        """The identity of ``func`` (its code by content: an edited app starts afresh)."""
        code = getattr(func, "__code__", None)
        try:
            digest = hashlib.sha256(marshal.dumps(code) if code is not None else
                                    repr(func).encode()).hexdigest()
        except ValueError:  # code marshal cannot write
            digest = hashlib.sha256(repr(code).encode()).hexdigest()
        return cls(str(getattr(func, "__module__", "?")),
                   str(getattr(func, "__qualname__", getattr(func, "__name__", "?"))), digest)

    @property
    def key(self) -> str:
        """File-name-safe key: a readable name plus the first hex digits of a hash."""
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.module}.{self.qualname}")[:80]
        whole = hashlib.sha256(f"{self.module}\0{self.qualname}\0{self.code_hash}".encode())
        return f"{name}-{whole.hexdigest()[:16]}"

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


def misses_of(report: Mapping[str, Any] | None, output: str = "") -> list[str]:
    """The modules a failed task missed, when they may be why it failed.

    From its result, else from the runner's stderr (the call could not even be loaded). A
    call that raised counts only if its error is an ImportError or names a missed module: a
    library that probed an optional module and then failed for another reason (a bug, bad
    data) is not rebuilt and rerun for it.
    """
    found = list((report or {}).get("misses") or ())
    for match in _MISSES_LINE.finditer(output or ""):
        found += [m.strip() for m in match.group(1).split(",")]
    misses = [m for m in dict.fromkeys(found) if isinstance(m, str) and _MODULE_NAME.match(m)]
    if report and report.get("status") == "raised" and not _import_related(report, misses):
        return []
    return misses


def _import_related(report: Mapping[str, Any], misses: list[str]) -> bool:
    if isinstance(report.get("exception"), ImportError):
        return True
    if str(report.get("exc_type", "")).endswith(("ImportError", "ModuleNotFoundError")):
        return True
    message = str(report.get("message", ""))
    return any(m.split(".")[0] in message for m in misses)


def importable_here(module: str) -> bool:
    """Whether ``module`` can be found on this host (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Learner:
    """Learnt distributions per app, kept in memory and in ``<cache_dir>/learnt/``.

    :param make_analyzer: builds an Analyzer given extra distributions (the executor's options
        plus what an app learnt); called once per distinct set.
    :param cache_dir: the env cache (None: nothing persists across runs).
    :param enabled: False keeps today's behaviour: nothing is learnt or applied.
    """

    def __init__(self, make_analyzer: Callable[[tuple[str, ...]], Any],
                 cache_dir: Path | None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._make_analyzer = make_analyzer
        self._dir = cache_dir / "learnt" if cache_dir is not None else None
        self._lock = threading.Lock()
        self._base = make_analyzer(())
        self._analyzers: dict[tuple[str, ...], Any] = {(): self._base}
        self._learnt: dict[AppIdentity, dict[str, str]] = {}
        self._attempts: dict[str, int] = {}

    @property
    def base(self) -> Any:
        """The Analyzer for apps that learnt nothing."""
        return self._base

    def analyzer_for(self, func: Callable) -> Any:
        """The Analyzer for ``func``: the base one plus the distributions its app learnt."""
        if not self.enabled:
            return self._base
        dists = tuple(sorted(set(self.learnt(AppIdentity.of(func)).values())))
        with self._lock:
            analyzer = self._analyzers.get(dists)
            if analyzer is None:
                analyzer = self._analyzers[dists] = self._make_analyzer(dists)
        return analyzer

    def learnt(self, app: AppIdentity) -> dict[str, str]:
        """Module -> distribution learnt by ``app`` (this run's, else the cache's)."""
        with self._lock:
            known = self._learnt.get(app)
            if known is None:
                known = self._learnt[app] = self._load(app)
            return dict(known)

    def learn(self, func: Callable, misses: Iterable[str]) -> dict[str, str]:
        """Learn what of ``misses`` this host can provide; returns the new module -> dist."""
        if not self.enabled:
            return {}
        app = AppIdentity.of(func)
        known = self.learnt(app)
        new: dict[str, str] = {}
        for module in misses:
            if module in known or not importable_here(module):
                continue
            dist = self._distribution_of(module)
            if dist is not None and dist not in known.values() and dist not in new.values():
                new[module] = dist
        if not new:
            return {}
        with self._lock:
            self._learnt[app] = {**known, **new}
            self._save(app, self._learnt[app])
        for module, dist in new.items():
            logger.warning(
                "app %s needed module %r at run time (distribution %r), which the analysis did "
                "not find: rebuilding its env with it and sending its failed tasks again. To "
                "build it right the first time, give PonchoExecutor "
                "envs=EnvOptions(extra_pkgs=[%r]) (or import %s in the app).",
                app.name, module, dist, dist, module)
        return new

    def may_retry(self, task_id: str) -> bool:
        """Whether task ``task_id`` may be sent again for learning (counts the attempt)."""
        with self._lock:
            done = self._attempts.get(task_id, 0)
            if done >= MAX_LEARN_RETRIES:
                return False
            self._attempts[task_id] = done + 1
            return True

    def forget_task(self, task_id: str) -> None:
        with self._lock:
            self._attempts.pop(task_id, None)

    def _distribution_of(self, module: str) -> str | None:
        found = self._base.classifier.classify(module)
        if found.kind == "distribution" and found.distribution is not None:
            return str(found.distribution.name)
        return None

    # persistence ------------------------------------------------------------------------------
    def _path(self, app: AppIdentity) -> Path | None:
        return self._dir / f"{app.key}.json" if self._dir is not None else None

    def _load(self, app: AppIdentity) -> dict[str, str]:
        path = self._path(app)
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {str(m): str(d) for m, d in dict(data["modules"]).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            logger.warning("ignoring unreadable learnt-modules file %s", path)
            return {}

    def _save(self, app: AppIdentity, modules: Mapping[str, str]) -> None:
        path = self._path(app)
        if path is None:
            return
        record = {"app": app.name, "code_sha256": app.code_hash, "modules": dict(modules)}
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("cannot remember what app %s learnt in %s: %s", app.name, path, exc)


def list_learnt(cache_dir: Path) -> list[dict[str, Any]]:
    """Every app's learnt modules in the cache, for ``parsl-poncho cache learnt``."""
    found = []
    for path in sorted((cache_dir / "learnt").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found.append({"key": path.stem, **record})
    return found


def forget_learnt(cache_dir: Path, selectors: Iterable[str]) -> list[str]:
    """Remove learnt records whose key or app name starts with one of ``selectors``.

    :raises PonchoError: a selector matches nothing.
    """
    records = list_learnt(cache_dir)
    removed = []
    for selector in selectors:
        hits = [r for r in records if r["key"].startswith(selector)
                or str(r.get("app", "")).startswith(selector)]
        if not hits:
            raise PonchoError(f"no learnt modules match {selector!r}: "
                              "see `parsl-poncho cache learnt`")
        for record in hits:
            (cache_dir / "learnt" / f"{record['key']}.json").unlink(missing_ok=True)
            removed.append(record["key"])
    return removed
