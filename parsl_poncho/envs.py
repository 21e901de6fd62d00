"""Environments made ready for tasks: built once per hash by the store, then verified once.

:class:`ReadyEnvs` hands the executor one future per (env hash, module set) that resolves to the
built :class:`~parsl_poncho.layers.LayeredEnv` (the store's base env plus the code layer of the
spec's local code, see :mod:`parsl_poncho.layers`) once the analysed modules import inside it on
this host, or fails with the build's or the check's error, so exactly the tasks needing that env
fail.
:class:`SeededBuilder` is the store's builder when no conda channel is reachable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from parsl_poncho.errors import ExecutorError
from parsl_poncho.layers import (
    CodeLayer,
    CodeLayers,
    LayeredEnv,
    code_key,
    combined_hash,
    python_of,
    split_spec,
)
from parsl_poncho.spec import Spec
from parsl_poncho.store import Env, EnvStore

if TYPE_CHECKING:
    from parsl_poncho.pip_sources import ResolvedSources

logger = logging.getLogger(__name__)

#: Conda packages the seeded local channel provides.
SEEDED_PACKAGES = frozenset({"python", "pip", "setuptools"})


class ReadyEnvs:
    """One future per (env hash, module set): the store builds the base, the code layer is
    packed, then the modules are imported from both.

    :param store: where envs are built and cached.
    :param verify: import the analysed modules in each new env before any task uses it.
    :param poncho_run: the worker shim (the check unpacks through it, as a worker does).
    :param unpack_dir: where the check unpacks envs.
    :param name: for log messages and thread names.
    """

    def __init__(self, store: EnvStore, *, verify: bool, poncho_run: Path, unpack_dir: Path,
                 name: str = "parsl-poncho") -> None:
        self.store = store
        self.verify = verify
        self.poncho_run = poncho_run
        self.unpack_dir = unpack_dir
        self.name = name
        self.layers = CodeLayers(store.cache_dir)
        self._lock = threading.Lock()
        self._built: dict[str, Future[Env]] = {}
        self._codes: dict[str, Future[CodeLayer]] = {}
        self._ready: dict[tuple[str, frozenset[str]], Future[LayeredEnv]] = {}
        self._keys: dict[int, tuple[Spec, tuple[Spec, str, str | None]]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-verify")
        self._code_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-code")

    def key(self, spec: Spec) -> str:
        """The env hash of ``spec``: its base hash combined with its code key (memoised)."""
        return combined_hash(*self._split(spec)[1:])

    def _split(self, spec: Spec) -> tuple[Spec, str, str | None]:
        """(base spec, base hash, code key or None), memoised per spec object."""
        hit = self._keys.get(id(spec))
        if hit is None or hit[0] is not spec:
            base, local = split_spec(spec)
            code = code_key(local, python_of(spec)) if local else None
            if len(self._keys) > 4096:
                self._keys.clear()
            hit = self._keys[id(spec)] = (spec, (base, self.store.key(base), code))
        return hit[1]

    def get(self, spec: Spec, env_hash: str, modules: Mapping[str, str | None]
            ) -> Future[LayeredEnv]:
        """The future of ``spec``'s env, built (one build per hash) and verified for ``modules``.

        :param env_hash: ``key(spec)``.
        :param modules: module -> distribution providing it (None for local code).
        """
        key = (env_hash, frozenset(modules))
        base_spec, base_hash, code = self._split(spec)
        with self._lock:
            ready = self._ready.get(key)
            if ready is not None:
                return ready
            built = self._built.get(base_hash)
            if built is None:
                built = self._built[base_hash] = self.store.get(base_spec)
            coded: Future[CodeLayer | None] = _done(None)
            if code is not None:
                coded = self._codes.get(code) or self._code_future(code, spec)
            ready = self._ready[key] = Future()
        modules = dict(modules)
        coded.add_done_callback(lambda c: self._forget_failed_code(key, ready, code, c))
        built.add_done_callback(lambda b: coded.add_done_callback(
            lambda c: self._after_build(b, c, ready, env_hash, modules)))
        return ready

    def _code_future(self, code: str, spec: Spec) -> Future[CodeLayer]:
        """Pack the code layer in the code thread (called holding the lock)."""
        future = self._codes[code] = self._code_pool.submit(
            self.layers.get, spec.local, python_of(spec))
        return future

    def _forget_failed_code(self, key: tuple[str, frozenset[str]], ready: Future[LayeredEnv],
                            code: str | None, coded: Future[Any]) -> None:
        """A failed code layer is tried again by the next submission (the code may be fixed)."""
        if coded.exception() is None:
            return
        with self._lock:
            if self._codes.get(code or "") is coded:
                del self._codes[code or ""]
            if self._ready.get(key) is ready:
                del self._ready[key]

    def close(self) -> None:
        """Stop verifying (a check in flight is abandoned; its tasks are failed by the caller)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._code_pool.shutdown(wait=False, cancel_futures=True)

    def _after_build(self, built: Future[Env], coded: Future[CodeLayer | None],
                     ready: Future[LayeredEnv], env_hash: str,
                     modules: dict[str, str | None]) -> None:
        """Both layers finished: pass an error on, or verify the env in the check thread."""
        exc = built.exception() or coded.exception()
        if exc is not None:
            logger.error("env %s failed to build: %s", env_hash, exc)
            ready.set_exception(exc)
            return
        env = LayeredEnv.of(built.result(), coded.result())
        if env.code is not None:
            logger.info("env %s = base %s + code %s (%s; packed in %.3fs)", env.hash,
                        env.base.hash, env.code.key, ", ".join(env.code.names),
                        env.code.built_seconds)
        if not self.verify or not modules or self._verified_marker(env, modules).exists():
            ready.set_result(env)
            return
        try:
            self._pool.submit(self._verify, env, modules, ready)
        except RuntimeError as exc:  # pool shut down
            ready.set_exception(ExecutorError(f"{self.name} shut down: {exc}"))

    def _verify(self, env: LayeredEnv, modules: dict[str, str | None],
                ready: Future[LayeredEnv]) -> None:
        """Import ``modules`` in ``env`` (base plus code) on this host; resolve ``ready``."""
        from parsl_poncho.build.verify import verify_env

        code = env.code
        try:
            verify_env(env.tarball, modules, env_hash=env.hash, poncho_run=self.poncho_run,
                       unpack_dir=self.unpack_dir, sha256=env.sha256,
                       code=code.tarball if code else None,
                       code_sha256=code.sha256 if code else None)
        except Exception as exc:  # noqa: BLE001 - goes to exactly the tasks needing this env
            logger.error("env %s failed verification: %s", env.hash, exc)
            ready.set_exception(exc)
            return
        logger.info("env %s verified: %s import", env.hash, ", ".join(sorted(modules)))
        marker = self._verified_marker(env, modules)
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            logger.debug("cannot record verification in %s", marker, exc_info=True)
        ready.set_result(env)

    def _verified_marker(self, env: LayeredEnv, modules: Mapping[str, str | None]) -> Path:
        """A file in the env cache saying ``modules`` import in ``env`` (checked in any run).

        Keyed by the base and the modules distributions provide: an edit of local code (a new
        code layer) needs no new check of the base, which is what verification is for (a
        missing distribution); a broken local module fails its task with its own error.
        """
        packaged = sorted(m for m, dist in modules.items() if dist is not None)
        key = hashlib.sha256("\n".join([env.base.hash, env.base.sha256, *packaged]).encode())
        return self.store.cache_dir / "verified" / key.hexdigest()


def _done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def modules_from_requirements(req: Any) -> dict[str, str | None]:
    """Module -> providing distribution (None for local code) from ``Analyzer.requirements()``.

    Modules first used inside a ``try`` block (optional imports) are left out: their absence
    is something the function handles.
    """
    out: dict[str, str | None] = {}
    for module, dist in req.providers.items():
        use = req.modules.get(module)
        if use is not None and use.optional:
            continue
        out[str(module)] = None if str(dist).startswith("local:") else str(dist)
    return out


class SeededBuilder:
    """The store's builder: python and pip from a channel seeded from this host's CPython.

    A spec whose conda part holds only what the seeded channel provides (what the analysis
    gives on a pip-based host) is built from that channel alone, so no conda channel needs to
    be reachable; any other spec searches the seeded channel first, then its own channels.
    """

    def __init__(self, channel_dir: Path | None = None):
        self.channel_dir = channel_dir
        self._seeded: Path | None = None
        self._lock = threading.Lock()

    def channel(self) -> Path:
        """Seed the local channel once per process (cheap when it is current)."""
        with self._lock:
            if self._seeded is None:
                from parsl_poncho.build import seed_channel

                self._seeded = seed_channel(self.channel_dir)
            return self._seeded

    def __call__(self, spec: Spec, output: Path, *, options: Any = None,
                 progress: Callable[[str], None] | None = None) -> Any:
        from parsl_poncho.build import BuildOptions, build_env
        from parsl_poncho.build.conda import spec_name

        options = options if options is not None else BuildOptions()
        seeded = str(self.channel())
        names = {spec_name(m) for m in spec.conda}
        if names <= SEEDED_PACKAGES:
            options = dataclasses.replace(options, channels=(seeded,))
        else:
            options = dataclasses.replace(
                options, extra_channels=(seeded, *options.extra_channels))
        return build_env(spec, output, options=options, progress=progress)


class SpecAdditions:
    """What the executor adds to every analysed spec: its ``data=`` (git/http sections) and
    where the pip part installs from (:class:`~parsl_poncho.pip_sources.ResolvedSources`).

    :raises SpecError: ``data`` is not valid spec sections, naming each problem, e.g.
        ``http.DB.sha256``.
    """

    def __init__(self, data: Mapping[str, Any] | None,
                 sources: ResolvedSources | None = None) -> None:
        self._data = _data_spec(data) if data else None
        self.sources = sources
        self._added: dict[int, tuple[Spec, Spec]] = {}

    def add(self, spec: Spec) -> Spec:
        """``spec`` with the data and pip sources added (memoised per analysed spec object)."""
        if self._data is None and self.sources is None:
            return spec
        hit = self._added.get(id(spec))
        if hit is None or hit[0] is not spec:
            merged = spec
            if self._data is not None:
                merged = dataclasses.replace(spec, git={**spec.git, **self._data.git},
                                             http={**spec.http, **self._data.http})
            if self.sources is not None:
                merged = self.sources.apply_to(merged)
            hit = self._added[id(spec)] = (spec, merged)  # holding spec keeps id unique
        return hit[1]


def _data_spec(data: Mapping[str, Any]) -> Spec:
    from parsl_poncho.errors import SpecError

    unknown = sorted(set(data) - {"git", "http"})
    if unknown:
        raise SpecError(f"PonchoExecutor(data=...) takes only 'git' and 'http' sections, "
                        f"not {unknown}", problems=[f"{k}: unknown section" for k in unknown])
    return Spec.from_dict({"conda": {"channels": [], "dependencies": []}, **data},
                          source="PonchoExecutor(data=...)")
