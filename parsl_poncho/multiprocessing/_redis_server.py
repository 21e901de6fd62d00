"""The driver's own ``redis-server``: started for the store, stopped at exit (driver only).

The server listens on the address the workers connect to, with a random ``requirepass`` (given
on its stdin, so ``ps`` does not show it), no persistence (``save ""``, no AOF), a ``maxmemory``
with ``noeviction`` (a full store refuses writes rather than drop keys) and no key expiry.

A watchdog (a tiny ``sh`` loop in its own session) stops the server when the driver is gone
without running its exit handlers (SIGKILL, an out-of-memory kill), so no server and no key
outlive a dead driver for more than about a second.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from parsl_poncho.multiprocessing.store import StoreUnavailable

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
NO_SERVER_HELP = (
    "redis-server is not installed on this host (it is not on PATH); the shared-state "
    "primitives (Queue, Lock, Manager, Process, Pipe, ...) keep their state in Redis. Install "
    "it (Debian/Ubuntu: `apt-get install redis-server`; without root: `conda install -c "
    "conda-forge redis-server` into any environment on PATH, or build it from source with "
    "`make`), or use an existing Redis that the workers can reach: "
    "parsl_poncho.multiprocessing.configure_store(redis_url='redis://:<password>@host:6379/0') "
    "or the environment variable PONCHO_REDIS_URL")


@dataclass
class RedisServer:
    """A running ``redis-server`` of ours: ``url`` (with its password) and the process."""

    url: str
    process: subprocess.Popen
    workdir: Path
    stopped: bool = field(default=False)

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE``, then wait (kill after 5 s); remove its directory."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            try:
                redis.Redis.from_url(self.url, socket_timeout=5).shutdown(nosave=True)
            except (redis.exceptions.RedisError, OSError):
                pass  # it closes the connection as it goes
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(host: str | None, maxmemory: str) -> RedisServer:
    """A new ``redis-server`` on ``host`` (default: where the workers connect, see
    :func:`worker_facing_host`) and a free port.

    :raises StoreUnavailable: redis-server is not installed, or does not start (its log said
        why).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StoreUnavailable(NO_SERVER_HELP)
    host = host or worker_facing_host()
    bind = _address_of(host)
    last = ""
    for _ in range(3):  # another process may take the free port first
        server = _try_start(binary, host, bind, maxmemory)
        if isinstance(server, RedisServer):
            logger.info("store: redis-server pid %d on %s", server.process.pid, bind)
            _watch(server)
            return server
        last = server
    raise StoreUnavailable(f"redis-server did not start on {bind} (its log ends: {last!r}); "
                           "pass configure_store(host=...) an address of this host, or "
                           "redis_url= an existing Redis")


def _try_start(binary: str, host: str, bind: str, maxmemory: str) -> RedisServer | str:
    """A started server, or the tail of the log of one that did not start."""
    workdir = Path(tempfile.mkdtemp(prefix="parsl-poncho-redis-"))
    password = secrets.token_urlsafe(32)
    port = _free_port(bind)
    config = "\n".join([
        f"bind {bind}", f"port {port}", f"requirepass {password}", 'save ""',
        "appendonly no", f"maxmemory {maxmemory}", "maxmemory-policy noeviction",
        f"dir {workdir}", f"logfile {workdir / 'redis.log'}", "daemonize no",
        "databases 1", ""])
    process = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    assert process.stdin is not None
    process.stdin.write(config.encode())
    process.stdin.close()
    url = f"redis://:{password}@{host}:{port}/0"
    server = RedisServer(url, process, workdir)
    client = redis.Redis(host=bind, port=port, password=password, socket_timeout=2)
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.01
    while time.monotonic() < deadline and process.poll() is None:
        try:
            client.ping()
            return server
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
            time.sleep(delay)  # a starting server: wait for its socket, briefly
            delay = min(delay * 2, 0.2)
    log = workdir / "redis.log"
    tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
    server.stop()
    return tail or f"exit code {process.returncode}"


# $1 the driver, $2 the server, $3 its directory. Ends with whichever ends first; a server that
# outlives its driver gets SIGTERM (no persistence: its keys go with it).
_WATCHDOG = ('while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; '
             'if kill -0 "$2" 2>/dev/null; then kill "$2"; sleep 1; rm -rf "$3"; fi')


def _watch(server: RedisServer) -> None:
    """Start the watchdog that stops ``server`` if this process dies without stopping it."""
    try:
        subprocess.Popen(["sh", "-c", _WATCHDOG, "poncho-redis-watchdog", str(os.getpid()),
                          str(server.process.pid), str(server.workdir)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:  # no sh: the exit handler still stops it on a normal exit
        logger.warning("store: no watchdog for redis-server pid %d (a killed driver leaves "
                       "it running)", server.process.pid, exc_info=True)


def worker_facing_host() -> str:
    """The loaded PonchoExecutor's ``address`` (default this host's name, as Work Queue's),
    else 127.0.0.1: the embedded executor's workers are local."""
    if "parsl" in sys.modules:
        from parsl_poncho.multiprocessing.link import _loaded_poncho_executor

        executor = _loaded_poncho_executor()
        if executor is not None:
            return executor.address or socket.gethostname()
    return "127.0.0.1"


def _address_of(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise StoreUnavailable(f"cannot resolve the store's host {host!r} ({exc}); pass "
                               "configure_store(host=...) an address of this host") from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
