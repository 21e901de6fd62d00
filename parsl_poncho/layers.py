"""Layered environments: a base (conda + pip + data) plus a code layer of the user's local code.

An app's spec splits into its **base spec** (the spec without ``x-parsl-poncho.local``), built
and cached by the :class:`~parsl_poncho.store.EnvStore` under the base hash, and its local code,
packed by :class:`CodeLayers` into a small ``code-<key>.tar.gz`` keyed by the code's content
hashes and the base's Python major.minor. Apps with equal package needs share one base whatever
their local code; editing a helper builds (in milliseconds) and ships only a new code layer.

The **env hash** of a task (what ``env_hash_of`` reports) is :func:`combined_hash` of the base
hash and the code key: the base hash itself when there is no local code.

Layout inside the env cache::

    code/code-<key>.tar.gz  the code layer (published with os.replace, never half written)
    code/<key>.json         its record: key, sha256, size, names, python, built_seconds (last)
    code/<key>.last-used    touched on every use (least-recently-used eviction)
    locks/code-<key>.build, locks/code-<key>.use   as the store's locks for envs

Example::

    layers = CodeLayers(store.cache_dir)
    base_spec, local = split_spec(spec)
    layer = layers.get(local, python_of(spec))      # built once, later calls are hits
    env_hash = combined_hash(store.key(base_spec), layer.key)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from parsl_poncho.errors import StoreError
from parsl_poncho.filelocks import flock, try_flock, write_json
from parsl_poncho.store import Env

#: Part of every code key: bump when the layer's layout changes.
CODE_LAYER_FORMAT = 1

_KEY = re.compile(r"^[0-9a-f]{64}$")
_PYTHON = re.compile(r"^python\s*(?:==|=|\s)\s*(\d+)\.(\d+)")


def split_spec(spec: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the base spec: ``spec`` without local code, the LocalCode entries)."""
    if not spec.local:
        return spec, ()
    return dataclasses.replace(spec, local=()), tuple(spec.local)


def python_of(spec: Any) -> str:
    """The Python major.minor the spec pins (``python=3.11.9`` -> ``3.11``), else this one's."""
    for entry in spec.conda:
        match = _PYTHON.match(str(entry).strip())
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def code_key(local: Sequence[Any], python: str) -> str:
    """The key of a code layer: sha256 over each entry's name and content hash, and Python."""
    payload = json.dumps({"format": CODE_LAYER_FORMAT, "python": python,
                          "local": {c.name: str(c.sha256).lower() for c in local}},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def combined_hash(base_hash: str, key: str | None) -> str:
    """The env hash covering both layers (the base hash alone when there is no code layer)."""
    if not key:
        return base_hash
    return hashlib.sha256(f"{base_hash}+{key}".encode()).hexdigest()


@dataclass(frozen=True)
class CodeLayer:
    """A built code layer: its tarball in the env cache and what it holds."""

    key: str
    tarball: Path
    sha256: str
    size: int
    names: tuple[str, ...] = ()
    python: str = ""
    built_seconds: float = 0.0

    @property
    def name(self) -> str:
        """The tarball's name in a task sandbox (``code-<key>.tar.gz``)."""
        return f"code-{self.key}.tar.gz"


@dataclass(frozen=True)
class LayeredEnv:
    """What a task runs with: a base env plus (optionally) a code layer.

    ``hash`` is the combined hash; ``tarball``/``sha256`` are the base's, ``size`` both.
    """

    hash: str
    base: Env
    code: CodeLayer | None = None
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, base: Env, code: CodeLayer | None) -> LayeredEnv:
        """Combine ``base`` and ``code``; the manifest records both hashes."""
        layers: dict[str, Any] = {"base": base.hash, "code": code.key if code else None}
        if code is not None:
            layers.update(code_sha256=code.sha256, code_names=list(code.names))
        return cls(combined_hash(base.hash, code.key if code else None), base, code,
                   {**base.manifest, "layers": layers})

    @property
    def tarball(self) -> Path:
        return self.base.tarball

    @property
    def sha256(self) -> str:
        return self.base.sha256

    @property
    def size(self) -> int:
        return self.base.size + (self.code.size if self.code else 0)

    @property
    def base_name(self) -> str:
        """The base tarball's name in a task sandbox (``env-<base hash>.tar.gz``)."""
        return f"env-{self.base.hash}.tar.gz"

    def describe(self) -> str:
        """``<hash> (base <b>, code <c>)`` for logs."""
        if self.code is None:
            return self.hash
        return f"{self.hash} (base {self.base.hash}, code {self.code.key})"


class CodeLayers:
    """The code layers of an env cache: build once per key, atomic publish, LRU eviction.

    :param cache_dir: the env cache (the store's ``cache_dir``); layers live in ``code/``.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.dir = self.cache_dir / "code"
        self._locks = self.cache_dir / "locks"
        self.builds = 0  # code layers this object built (tests and benchmarks read it)
        self._known: dict[str, CodeLayer] = {}
        self._mutex = threading.Lock()
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the code-layer cache {str(self.dir)!r}: {exc}; "
                             "pass a writable cache_dir") from exc

    def get(self, local: Sequence[Any], python: str) -> CodeLayer:
        """The code layer of ``local`` (LocalCode entries), built now unless cached.

        :raises BuildError: a source is missing, not importable, or changed since its analysis.
        """
        key = code_key(local, python)
        with self._mutex:
            layer = self._known.get(key)
            if layer is None or not layer.tarball.is_file():
                layer = self.lookup(key) or self._build(key, local, python)
                self._known[key] = layer
        self._touch(key)
        return layer

    def lookup(self, key: str) -> CodeLayer | None:
        """The published layer ``key`` or None (absent, unreadable or not matching its record)."""
        if not _KEY.match(key):
            return None
        try:
            record = json.loads((self.dir / f"{key}.json").read_text())
            tarball = self.dir / f"code-{key}.tar.gz"
            if tarball.stat().st_size != int(record["size"]):
                return None
            return CodeLayer(key, tarball, str(record["sha256"]), int(record["size"]),
                             tuple(record.get("names", ())), str(record.get("python", "")),
                             float(record.get("built_seconds", 0.0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _build(self, key: str, local: Sequence[Any], python: str) -> CodeLayer:
        """Under the key's build lock: pack into a temp file, os.replace it, then the record."""
        from parsl_poncho.codepack import pack_code_layer

        with flock(self._locks / f"code-{key}.build", fcntl.LOCK_EX):
            found = self.lookup(key)
            if found is not None:
                return found
            started = time.perf_counter()
            tmp = self.dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                names = pack_code_layer(local, tmp)
                sha256, size = _digest(tmp)
                os.replace(tmp, self.dir / f"code-{key}.tar.gz")
            finally:
                tmp.unlink(missing_ok=True)
            seconds = round(time.perf_counter() - started, 4)
            record = {"format": CODE_LAYER_FORMAT, "key": key, "sha256": sha256, "size": size,
                      "names": names, "python": python, "created": time.time(),
                      "built_seconds": seconds}
            tmp_json = self.dir / f".{key}.{os.getpid()}.json.tmp"
            write_json(tmp_json, record)
            os.replace(tmp_json, self.dir / f"{key}.json")
            self.builds += 1
        return CodeLayer(key, self.dir / f"code-{key}.tar.gz", sha256, size, tuple(names), python,
                         seconds)

    # -- listing, use and eviction ---------------------------------------------------------
    def entries(self) -> list[CodeLayer]:
        """Every published layer, least recently used first."""
        found = [self.lookup(p.name[:-5]) for p in self.dir.glob("*.json")]
        return sorted((c for c in found if c is not None), key=lambda c: self.last_used(c.key))

    def last_used(self, key: str) -> float:
        for name in (f"{key}.last-used", f"{key}.json"):
            with contextlib.suppress(OSError):
                return (self.dir / name).stat().st_mtime
        return 0.0

    def in_use(self, key: str) -> bool:
        """True while some process holds :meth:`use` on the layer."""
        with try_flock(self._locks / f"code-{key}.use", fcntl.LOCK_EX) as got:
            return not got

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[CodeLayer]:
        """Hold layer ``key`` in use (a shared flock): remove/prune leave it alone meanwhile.

        :raises StoreError: the layer is not in the cache.
        """
        with flock(self._locks / f"code-{key}.use", fcntl.LOCK_SH):
            layer = self.lookup(key)
            if layer is None:
                raise StoreError(f"code layer {key} is not in {str(self.dir)!r}; submit the "
                                 "app again to rebuild it")
            self._touch(key)
            yield layer

    def remove(self, key: str) -> bool:
        """Delete layer ``key``; False if absent.

        :raises StoreError: the layer is in use by some process.
        """
        if not _KEY.match(key):
            raise StoreError(f"{key!r} is not a code-layer key (64 hex digits)")
        with try_flock(self._locks / f"code-{key}.use", fcntl.LOCK_EX, unlink=True) as got:
            if not got:
                raise StoreError(f"code layer {key} is in use by a running process; retry "
                                 "when it ends")
            existed = (self.dir / f"{key}.json").exists()
            for name in (f"{key}.json", f"code-{key}.tar.gz", f"{key}.last-used"):  # record first
                (self.dir / name).unlink(missing_ok=True)
        with self._mutex:
            self._known.pop(key, None)
        return existed

    def prune(self, max_size: int, *, keep: Sequence[str] = ()) -> list[str]:
        """Evict least recently used layers not in use until they hold at most ``max_size``."""
        layers = self.entries()
        total = sum(c.size for c in layers)
        evicted = []
        for layer in layers:
            if total <= max_size:
                break
            if layer.key in keep:
                continue
            with contextlib.suppress(StoreError):
                if self.remove(layer.key):
                    total -= layer.size
                    evicted.append(layer.key)
        return evicted

    def _touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / f"{key}.last-used").touch()


def _digest(path: Path) -> tuple[str, int]:
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)
