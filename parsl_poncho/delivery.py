"""How environments reach the workers: ``PonchoExecutor(env_delivery=...)``.

``"manager"`` (the default)
    Each env tarball and code layer is a cached Work Queue input: the manager sends it to every
    worker (to every foreman, with ``work_queue_worker --foreman``), one at a time.
:class:`SharedDir`
    The executor publishes each file into a directory every node sees under the same path;
    each node copies it once to its local cache and unpacks it there.
:class:`Url`
    The executor publishes into ``publish_dir``, served at ``base`` by a web server, object store
    or HTTP cache (or, with ``serve=True``, by a server of its own); each node fetches once.

In the last two the manager sends none of the environment's bytes. The task command starts with
``poncho_fetch`` (worker_shim/), which keeps one checked copy per node (lock, sha256, temporary
name and rename, retries) and links it into the sandbox; ``poncho_run`` then checks the sha256
again and unpacks it on node-local disk as in the manager mode.

Published files are content-addressed: ``<sha256>-<name>``, each with a ``.sha256`` sidecar.
They are published at dispatch, by the thread that readies the env, once per env and run.

Why not Work Queue's own ``specify_file_command`` input (cctools 9.9, tried here): a command
that fails makes the worker disconnect and the task go back to waiting, for ever; a command
without ``%%`` or longer than about 4 KB kills the manager process; and a bad file it fetched
stays in that worker's cache for later tasks. A step of the task itself can retry, check and
fail the one task with a clear error, and can share one copy between the workers of a node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from parsl_poncho.build._util import sha256_file
from parsl_poncho.errors import DeliveryError
from parsl_poncho.exec_modes import DEFAULT_WORKER_CACHE, ExecMode, ServerCall, WorkerCommands
from parsl_poncho.workqueue import FileToWq

logger = logging.getLogger(__name__)

#: The worker file that fetches (worker_shim/poncho_fetch).
PONCHO_FETCH = "poncho_fetch"


@dataclass(frozen=True)
class SharedDir:
    """Deliver through ``path``, a directory every node sees under the same path (Lustre,
    GPFS, NFS). Nodes copy each file to local disk once and never import from ``path``.

    :param path: the shared directory (created if missing; the executor writes into it).
    :param tries: attempts a node makes per file before the task fails.
    """

    path: str
    tries: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise DeliveryError(f"SharedDir(path={self.path!r}): give the shared directory's "
                                "path, the same on every node")
        object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(str(self.path))))
        _check_tries(self.tries, "SharedDir")


@dataclass(frozen=True)
class Url:
    """Deliver over HTTP: workers fetch ``base/<name>`` with curl or wget.

    :param base: the URL where ``publish_dir`` is served (with ``serve=True``, where to listen:
        ``http://HOST:PORT``; port 0 or none picks a free one; default: every interface, with
        this host's name in URLs).
    :param publish_dir: where the executor writes the files (with ``serve=True``, default a
        ``published/`` directory in the run directory).
    :param serve: serve ``publish_dir`` from the submit host, on a thread of this process.
    :param tries: attempts a node makes per file before the task fails.
    """

    base: str | None = None
    publish_dir: str | None = None
    serve: bool = False
    tries: int = 5

    def __post_init__(self) -> None:
        problems = []
        if self.base is None and not self.serve:
            problems.append("give base (the URL serving publish_dir), or serve=True")
        if self.base is not None:
            parts = urlsplit(self.base)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"base {self.base!r} is not an http:// or https:// URL")
            elif self.serve and parts.scheme != "http":
                problems.append(f"serve=True serves plain http, not {self.base!r}")
        if self.publish_dir is None and not self.serve:
            problems.append("give publish_dir (the directory that base serves), or serve=True")
        if problems:
            raise DeliveryError("Url(...): " + "; ".join(problems))
        if self.publish_dir is not None:
            object.__setattr__(self, "publish_dir",
                               os.path.abspath(os.path.expanduser(str(self.publish_dir))))
        _check_tries(self.tries, "Url")


#: The value of ``PonchoExecutor(env_delivery=...)``.
EnvDelivery = Union[Literal["manager"], SharedDir, Url]


def _check_tries(tries: Any, what: str) -> None:
    if not isinstance(tries, int) or isinstance(tries, bool) or tries < 1:
        raise DeliveryError(f"{what}(tries={tries!r}): tries is a whole number, at least 1")


def check_env_delivery(value: Any) -> EnvDelivery:
    """``value`` if it is a delivery mode.

    :raises DeliveryError: naming the accepted values.
    """
    if value == "manager" or isinstance(value, (SharedDir, Url)):
        return value
    raise DeliveryError(
        f"env_delivery={value!r}: use 'manager', SharedDir(path) or Url(base, publish_dir) / "
        "Url(serve=True) (from parsl_poncho import SharedDir, Url)")


class Publisher:
    """Copies files into a publish directory under content-addressed names, atomically.

    ``publish(local, sha256)`` writes ``<sha256>-<name>`` through a temporary name and a
    rename, checking the copy against ``sha256``, then its ``.sha256`` sidecar; a file already
    there is checked once per Publisher and rewritten if it does not match.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def publish(self, local: str | os.PathLike, sha256: str) -> str:
        """The published name of ``local``, written if needed.

        :raises DeliveryError: the directory is not writable, or ``local`` does not match
            ``sha256`` (the env cache entry is damaged).
        """
        local = Path(local)
        name = f"{sha256}-{local.name}"
        with self._lock:
            if name in self._done:
                return name
            try:
                self._publish(local, name, sha256)
            except OSError as exc:
                raise DeliveryError(
                    f"cannot publish {local.name} into {self.directory}: {exc}; make the "
                    "directory writable from the submit host (and check its free space)"
                ) from exc
            self._done.add(name)
        return name

    def _publish(self, local: Path, name: str, sha256: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / name
        if target.is_file() and sha256_file(target) == sha256:
            return
        if target.exists():
            logger.warning("published %s does not match its sha256; publishing it again", target)
        # Unique across submit hosts and threads that may publish into one shared directory.
        unique = f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"
        tmp = self.directory / f".{name}.{unique}.tmp"
        try:
            digest = hashlib.sha256()
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != sha256:
                raise DeliveryError(
                    f"{local} does not match its recorded sha256 {sha256}: the env cache entry is "
                    "damaged; remove it (parsl-poncho cache prune) so it is built again")
            tmp.chmod(0o644)
            os.replace(tmp, target)
            sidecar = self.directory / f".{name}.sha256.{unique}.tmp"
            sidecar.write_text(f"{sha256}  {name}\n")
            os.replace(sidecar, self.directory / f"{name}.sha256")
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("published %s (%d bytes) into %s", local.name, target.stat().st_size,
                    self.directory)


class Delivery:
    """The manager mode: the task's worker files and env files are all Work Queue inputs.

    The executor asks it (as it would :class:`~parsl_poncho.exec_modes.WorkerCommands`) for a
    task's ``inputs`` and ``command_for``, and closes it at shutdown.
    """

    def __init__(self, commands: WorkerCommands) -> None:
        self.commands = commands

    def inputs(self, mode: ExecMode, env: Any = None) -> tuple[FileToWq, ...]:
        return self.commands.inputs(mode, env)

    def command_for(self, mode: ExecMode, env: Any, call: ServerCall | None = None) -> str:
        return self.commands.command_for(mode, env, call)

    def close(self) -> None:
        """Release what the mode holds (the file server of ``Url(serve=True)``)."""


class FetchDelivery(Delivery):
    """SharedDir and Url: env files are published, and ``poncho_fetch`` gets them on the node.

    :param commands: the executor's worker commands.
    :param fetcher: the staged poncho_fetch (a cached input of every task).
    :param publisher: writes the files where nodes find them.
    :param source_of: published name -> what the node fetches (URL or path).
    :param tries: attempts per file on the node.
    :param server: the file server to stop at :meth:`close` (``Url(serve=True)``).
    """

    def __init__(self, commands: WorkerCommands, fetcher: FileToWq, publisher: Publisher,
                 source_of: Any, tries: int, server: Any = None) -> None:
        super().__init__(commands)
        self.fetcher, self.publisher, self.source_of = fetcher, publisher, source_of
        self.tries, self.server = tries, server
        # The fetch goes between init_command and poncho_run, so the inner command has none.
        self._inner = dataclasses.replace(commands, init_command="")

    def inputs(self, mode: ExecMode, env: Any = None) -> tuple[FileToWq, ...]:
        return (*self.commands.inputs(mode), self.fetcher)

    def command_for(self, mode: ExecMode, env: Any, call: ServerCall | None = None) -> str:
        files = [(env.base_name, env.sha256, env.tarball)]
        if env.code is not None:
            files.append((env.code.name, env.code.sha256, env.code.tarball))
        fetch = ["./" + PONCHO_FETCH, "--cache-dir",
                 self.commands.worker_cache_dir and shlex.quote(self.commands.worker_cache_dir)
                 or DEFAULT_WORKER_CACHE,
                 "-t", str(self.tries), "-w", str(self.commands.unpack_timeout)]
        for name, sha256, local in files:
            published = self.publisher.publish(local, sha256)
            fetch += ["--get", shlex.quote(name), sha256, shlex.quote(self.source_of(published))]
        command = " ".join(fetch) + " 2>&1 && " + self._inner.command_for(mode, env, call)
        init = self.commands.init_command
        return f"{init}; {command}" if init else command

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def delivery_for(option: EnvDelivery, commands: WorkerCommands, stage_dir: Path,
                 run_dir: Path, address: str | None = None) -> Delivery:
    """The :class:`Delivery` of an ``env_delivery`` option, its server started if it has one.

    :param stage_dir: where worker files are staged (poncho_fetch joins them).
    :param run_dir: the executor's run directory (``Url(serve=True)`` publishes under it).
    :param address: the executor's ``address`` (the host workers reach it by).
    :raises DeliveryError: the option is invalid or its server cannot listen.
    """
    option = check_env_delivery(option)
    if option == "manager":
        return Delivery(commands)
    fetcher = stage_fetcher(stage_dir)
    if isinstance(option, SharedDir):
        root = Path(option.path)
        return FetchDelivery(commands, fetcher, Publisher(root), lambda n: str(root / n),
                             option.tries)
    publish_dir = Path(option.publish_dir or run_dir / "published")
    server, base = None, option.base
    if option.serve:
        from parsl_poncho.fileserver import FileServer

        parts = urlsplit(option.base or "http://:0")
        publish_dir.mkdir(parents=True, exist_ok=True)
        server = FileServer(publish_dir, host=parts.hostname or "", port=parts.port or 0,
                            url_host=parts.hostname or address)
        base = server.start()
    base = str(base).rstrip("/")
    return FetchDelivery(commands, fetcher, Publisher(publish_dir), lambda n: f"{base}/{n}",
                         option.tries, server)


def stage_fetcher(dest: Path) -> FileToWq:
    """Copy poncho_fetch under a content-derived name (workers cache each version once).

    :raises ShimNotFoundError: the installation lacks it.
    """
    from parsl_poncho.shim import shim_file

    dest.mkdir(parents=True, exist_ok=True)
    data = shim_file(PONCHO_FETCH).read_bytes()
    local = dest / f"{PONCHO_FETCH}-{hashlib.sha256(data).hexdigest()[:16]}"
    if not local.exists():
        tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        os.replace(tmp, local)
    return FileToWq(str(local), PONCHO_FETCH, cache=True)
