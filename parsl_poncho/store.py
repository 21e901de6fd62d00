"""The content-addressed cache of environment tarballs: one build per spec hash, atomic publish.

Layout of a cache directory (created mode 0700)::

    envs/<hash>/env-<hash>.tar.gz   the packed environment
    envs/<hash>/manifest.json       what the builder reports (spec, lock, phases, tools)
    envs/<hash>/entry.json          the store's record: hash, tarball sha256 and size, created
    envs/<hash>/last-used           touched on every hit / use (least-recently-used eviction)
    locks/<hash>.build              exclusive flock held while <hash> is being built
    locks/<hash>.use                shared flock held while an Env is in use (store.use)
    staging/build-<hash>-*/         a build in progress (the builder's scratch lives inside)

A build happens in ``staging/`` on the cache's filesystem; when the tarball and both JSON files
are written and fsynced, the whole directory is renamed into ``envs/<hash>`` with one
``os.replace``. An entry therefore either exists complete or not at all: a build that fails or is
killed (even with SIGKILL) leaves at most a staging directory, which the next builder of that
hash (or ``prune``) removes. Concurrent requests for one hash are merged in-process (one shared
in-flight future) and across processes (the ``.build`` flock: whoever gets it second finds the
published entry and does not build).

Example::

    store = EnvStore()                      # $PARSL_PONCHO_CACHE or ~/.cache/parsl-poncho
    env = store.get(spec).result()          # built once; later calls are hits
    with store.use(env):                    # eviction (prune) will not remove it meanwhile
        ship(env.tarball)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from parsl_poncho.build._util import sha256_file
from parsl_poncho.build_logs import as_build_error, with_build_log
from parsl_poncho.errors import BuildError, PonchoError, StoreError
from parsl_poncho.filelocks import flock, fsync_path, write_json
from parsl_poncho.paths import default_cache_dir
from parsl_poncho.store_eviction import HASH as _HASH
from parsl_poncho.store_eviction import Eviction

if TYPE_CHECKING:
    from parsl_poncho.build import BuildOptions
    from parsl_poncho.spec import Spec

logger = logging.getLogger(__name__)

Builder = Callable[..., Any]
Progress = Callable[[str], None]

_ENTRY_FORMAT = 1


@dataclass(frozen=True)
class Env:
    """A built, published environment: its tarball and what the builder recorded."""

    hash: str
    tarball: Path
    sha256: str
    size: int
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class EnvStore(Eviction):
    """Content-addressed cache of environment tarballs (see the module docstring).

    :param cache_dir: where entries live (default: ``paths.default_cache_dir()``).
    :param build_options: passed to the builder as ``options=``; its ``platform`` (if any) is
        part of the key.
    :param builder: ``builder(spec, output_path, options=..., progress=...)`` writing the tarball
        at ``output_path`` and returning a manifest (``to_dict()`` or a dict). Default:
        ``parsl_poncho.build.build_env``.
    :param max_size: after each publish, evict least-recently-used entries not in use until the
        cache holds at most this many bytes (None: never evict automatically).
    :param max_parallel_builds: builds of different specs running at once in this process.
    :param progress: default progress callback for builds (default: log at INFO).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        build_options: BuildOptions | None = None,
        builder: Builder | None = None,
        max_size: int | None = None,
        max_parallel_builds: int = 1,
        progress: Progress | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir or default_cache_dir()).expanduser().absolute()
        self.build_options = build_options
        self.builder = builder
        self.max_size = max_size
        self.progress = progress
        self._envs = self.cache_dir / "envs"
        self._locks = self.cache_dir / "locks"
        self._staging = self.cache_dir / "staging"
        self._make_dirs()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, max_parallel_builds), thread_name_prefix="parsl-poncho-build"
        )
        self._mutex = threading.Lock()
        self._inflight: dict[str, concurrent.futures.Future[Env]] = {}
        self._validated: set[str] = set()
        self._known: dict[str, tuple[Env, tuple[int, int] | None]] = {}
        self._closed = False
        with contextlib.suppress(OSError):
            self.clean_staging()  # leftovers of builders that died (their build lock is free)

    def _make_dirs(self) -> None:
        try:
            # Several processes may create a new cache at once: losing that race is fine.
            try:
                self.cache_dir.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass
            else:
                os.chmod(self.cache_dir, 0o700)  # mkdir's mode is filtered by the umask
            for sub in (self._envs, self._locks, self._staging):
                sub.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"Cannot create the environment cache {str(self.cache_dir)!r}: {exc}; set "
                "$PARSL_PONCHO_CACHE or pass EnvOptions(cache_dir=...) a writable directory"
            ) from exc

    # -- keys ----------------------------------------------------------------------------------
    @property
    def platform(self) -> str | None:
        """The platform builds target (``build_options.platform``); None means this host's."""
        return getattr(self.build_options, "platform", None)

    def key(self, spec: Spec) -> str:
        """The cache key of ``spec``: its hash for :attr:`platform`."""
        return spec.hash(self.platform)

    # -- lookups -------------------------------------------------------------------------------
    def lookup(self, env_hash: str) -> Env | None:
        """The complete entry for ``env_hash``, or None (absent or unreadable)."""
        if not _HASH.match(env_hash):
            return None
        entry = self._envs / env_hash
        try:
            record = json.loads((entry / "entry.json").read_text())
            manifest = json.loads((entry / "manifest.json").read_text())
            tarball = entry / record["tarball"]
            if not tarball.is_file():
                return None
            return Env(
                hash=env_hash,
                tarball=tarball,
                sha256=record["sha256"],
                size=int(record["size"]),
                manifest=manifest,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _cached_lookup(self, env_hash: str) -> Env | None:
        """lookup() memoised in-process while the very same tarball is there (get's hot path)."""
        known = self._known.get(env_hash)
        stamp = _stamp(self._envs / env_hash / f"env-{env_hash}.tar.gz")
        if known is not None and stamp is not None and known[1] == stamp:
            return known[0]
        env = self.lookup(env_hash)
        if env is not None and not _intact(env):  # checked once per process and tarball
            logger.warning("env %s: %s no longer matches its recorded size and sha256 (damaged "
                           "on disk); rebuilding it", env_hash, env.tarball)
            env = None
        if env is None:
            self._known.pop(env_hash, None)
        else:
            self._known[env_hash] = (env, _stamp(env.tarball))
        return env

    # -- get -----------------------------------------------------------------------------------
    def get(
        self, spec: Spec, *, progress: Progress | None = None
    ) -> concurrent.futures.Future[Env]:
        """A future of the built env for ``spec``: done at once on a hit, else one build.

        Concurrent calls for one spec, from threads of this process or from other processes,
        cause one build; everyone gets the same entry. Each caller gets its own future
        (cancelling it does not cancel the shared build).

        :raises SpecError: at once, when the spec is invalid (nothing is built or cached).
        :raises StoreError: when the store is closed.
        The future raises BuildError when the build fails (``step``, ``package``, ``log_tail``).
        """
        if self._closed:
            raise StoreError("EnvStore is closed; create a new one")
        try:
            env_hash = self.key(spec)
        except Exception:  # a malformed Spec object: let validation say what is wrong
            spec.validate()
            raise
        if env_hash not in self._validated:
            spec = spec.validate()
            self._validated.add(env_hash)
        with self._mutex:
            shared = self._inflight.get(env_hash)
            if shared is None:
                env = self._cached_lookup(env_hash)
                if env is not None:
                    self._touch(env_hash)
                    return _done(env)
                shared = concurrent.futures.Future()
                self._inflight[env_hash] = shared
                self._pool.submit(self._build_job, spec, env_hash, shared, progress)
        return _follow(shared)

    def _build_job(
        self,
        spec: Spec,
        env_hash: str,
        shared: concurrent.futures.Future[Env],
        progress: Progress | None,
    ) -> None:
        shared.set_running_or_notify_cancel()
        try:
            env = self._build_once(spec, env_hash, progress)
        except BaseException as exc:  # delivered to every waiter; the pool thread survives
            with self._mutex:
                self._inflight.pop(env_hash, None)
            shared.set_exception(with_build_log(as_build_error(exc, env_hash), self.cache_dir,
                                                env_hash))
            return
        with self._mutex:
            self._inflight.pop(env_hash, None)
        shared.set_result(env)
        if self.max_size is not None:
            try:
                self.prune(self.max_size, keep=(env_hash,))
            except PonchoError as exc:
                logger.warning("automatic eviction failed: %s", exc)

    def _build_once(self, spec: Spec, env_hash: str, progress: Progress | None) -> Env:
        """Under the hash's build lock: return the entry if someone published it, else build."""
        with flock(self._lock_path(env_hash, "build"), fcntl.LOCK_EX):
            env = self.lookup(env_hash)
            if env is not None and _intact(env):  # another process built it meanwhile
                self._touch(env_hash)
                return env
            self._remove_stale_staging(env_hash)
            staging = Path(tempfile.mkdtemp(prefix=f"build-{env_hash}-", dir=self._staging))
            try:
                self._build_into(spec, env_hash, staging, progress)
                self._publish(env_hash, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        env = self.lookup(env_hash)
        if env is None:
            raise StoreError(f"entry {env_hash} vanished right after it was published")
        return env

    def _build_into(
        self, spec: Spec, env_hash: str, staging: Path, progress: Progress | None
    ) -> None:
        tarball = staging / f"env-{env_hash}.tar.gz"
        callback = progress or self.progress or _log_progress(env_hash)
        builder = self.builder or _default_builder()
        started = time.time()
        manifest = builder(spec, tarball, options=self._options_for(staging), progress=callback)
        if not tarball.is_file():
            raise BuildError(
                f"the builder returned without writing {tarball.name}; this is a bug in the "
                "builder",
                step="store",
            )
        manifest_dict = _manifest_dict(manifest)
        sha256, size = _file_digest(tarball)
        record = {
            "format": _ENTRY_FORMAT,
            "hash": env_hash,
            "tarball": tarball.name,
            "sha256": sha256,
            "size": size,
            "created": started,
            "built_seconds": round(time.time() - started, 3),
        }
        write_json(staging / "manifest.json", manifest_dict)
        write_json(staging / "entry.json", record)
        (staging / "last-used").touch()
        fsync_path(tarball)
        fsync_path(staging)

    def _options_for(self, staging: Path) -> Any:
        """Build options with the builder's scratch inside ``staging`` (cleaned up with it)."""
        options = self.build_options
        if options is None:
            try:
                from parsl_poncho.build import BuildOptions
            except ImportError:
                return None
            return BuildOptions(workdir=staging)
        if dataclasses.is_dataclass(options) and getattr(options, "workdir", "-") is None:
            return dataclasses.replace(options, workdir=staging)
        return options

    def _publish(self, env_hash: str, staging: Path) -> None:
        target = self._envs / env_hash
        if target.exists():  # an unreadable leftover (lookup said absent): move it aside
            self._discard(target)
        os.replace(staging, target)
        fsync_path(self._envs)

    # -- use and eviction ----------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, env: Env | str) -> Iterator[Env]:
        """Hold ``env`` (an Env or its hash) in use: prune/remove will not delete it meanwhile.

        A shared flock on ``locks/<hash>.use``; any number of processes may hold it at once.
        Hold it for as long as something may still read the tarball (e.g. until Work Queue
        has sent it to every worker that needs it).

        :raises StoreError: the entry is not (or no longer) in the cache; call get() again.
        """
        env_hash = env if isinstance(env, str) else env.hash
        with flock(self._lock_path(env_hash, "use"), fcntl.LOCK_SH):
            current = self.lookup(env_hash)
            if current is None:
                raise StoreError(
                    f"environment {env_hash} is not in the cache {str(self.cache_dir)!r} (it was "
                    "removed or evicted); call EnvStore.get(spec) again to rebuild it"
                )
            self._touch(env_hash)
            yield current

    def close(self, wait: bool = True) -> None:
        """Stop accepting get(); wait for running builds (``wait``) or cancel queued ones."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> EnvStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------
    def _remove_stale_staging(self, env_hash: str) -> None:
        """Called holding the build lock: any staging dir for this hash is a dead builder's."""
        for path in self._staging.glob(f"build-{env_hash}-*"):
            shutil.rmtree(path, ignore_errors=True)

    def _touch(self, env_hash: str) -> None:
        with contextlib.suppress(OSError):
            (self._envs / env_hash / "last-used").touch()


# -- module helpers -------------------------------------------------------------------------------
def _default_builder() -> Builder:
    from parsl_poncho.build import build_env

    return build_env


def _done(env: Env) -> concurrent.futures.Future[Env]:
    future: concurrent.futures.Future[Env] = concurrent.futures.Future()
    future.set_result(env)
    return future


def _follow(shared: concurrent.futures.Future[Env]) -> concurrent.futures.Future[Env]:
    """A caller's own future that completes with ``shared``."""
    mine: concurrent.futures.Future[Env] = concurrent.futures.Future()

    def copy(done: concurrent.futures.Future[Env]) -> None:
        if not mine.set_running_or_notify_cancel():
            return  # this caller cancelled
        exc = done.exception()
        if exc is not None:
            mine.set_exception(exc)
        else:
            mine.set_result(done.result())

    shared.add_done_callback(copy)
    return mine


def _log_progress(env_hash: str) -> Progress:
    def report(message: str) -> None:
        logger.info("env %s: %s", env_hash[:12], message)

    return report


def _manifest_dict(manifest: Any) -> dict[str, Any]:
    if manifest is None:
        return {}
    if isinstance(manifest, dict):
        return manifest
    to_dict = getattr(manifest, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if dataclasses.is_dataclass(manifest) and not isinstance(manifest, type):
        return dataclasses.asdict(manifest)
    raise BuildError(
        f"the builder returned {type(manifest).__name__}, not a manifest with to_dict()",
        step="store",
    )


def _intact(env: Env) -> bool:
    """The tarball still has the size and sha256 recorded when it was published."""
    try:
        return env.tarball.stat().st_size == env.size and _file_digest(env.tarball) == (
            env.sha256, env.size)
    except OSError:
        return False


def _file_digest(path: Path) -> tuple[str, int]:
    # The tarball is never rewritten in place (temp name, then rename), so stat agrees.
    return sha256_file(path), path.stat().st_size


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
