"""The shared-state store: one Redis server (ours, or the user's) and this run's key prefix.

In the driver, :func:`get_store` starts ``redis-server`` on first use (see ``_redis_server``),
or connects to ``configure_store(redis_url=...)`` / ``$PONCHO_REDIS_URL``, and at interpreter
exit deletes this run's keys and stops the server it started. A :class:`Store` pickles as
``(url, prefix)``: unpickled on a worker it connects to that server and never starts one.

cloudpickle pickles this module BY VALUE (as the primitives built on it), so a worker needs only
the ``redis`` client: keep it free of imports from the package (the driver-only server code is
imported by a name in a variable, so the dependency analysis does not look for it).
"""

from __future__ import annotations

import atexit
import importlib
import os
import secrets
import sys
import threading
import time
import types
from typing import Any, Callable

import cloudpickle
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Store", "StoreUnavailable", "configure_store", "get_store"]

#: The environment variable naming an existing Redis to use.
URL_ENV = "PONCHO_REDIS_URL"
#: Blocking commands wait at most this long per round trip; the socket gives up a bit later,
#: so a server whose host vanished is noticed within seconds (a killed server at once).
BLOCK_SLICE = 5.0
SOCKET_TIMEOUT = BLOCK_SLICE + 5.0
_SERVER_MODULE = "parsl_poncho.multiprocessing._redis_server"  # driver only, see above

_REGISTRY = "_parsl_poncho_store_state"


def _process_state() -> dict[str, Any]:
    """This process's store state. Kept in ``sys.modules``, not in this module's globals: a
    worker unpickles a by-value copy of this module per task, and the copies must share it."""
    module = sys.modules.get(_REGISTRY)
    if module is None:
        fresh = types.ModuleType(_REGISTRY)
        fresh.state = {"store": None, "seen": None, "options": {}, "clients": {},
                       "lock": threading.Lock()}
        module = sys.modules.setdefault(_REGISTRY, fresh)
    return module.state


class StoreUnavailable(RuntimeError):
    """The store cannot be used: not running, unreachable, or refusing the password.

    A ``RuntimeError`` (not a ``PonchoError``) because workers raise it too, and they have no
    parsl_poncho to import ``parsl_poncho.errors`` from.
    """


class Store:
    """One Redis database and this run's key prefix.

    :param url: ``redis://:<password>@<host>:<port>/<db>``.
    :param prefix: every key of this run starts with it.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._client: tuple[int, redis.Redis] | None = None

    def __reduce__(self) -> tuple[Callable, tuple[str, str]]:
        return (_unpickle_store, (self.url, self.prefix))

    def __repr__(self) -> str:
        return f"Store({_redact(self.url)!r}, prefix={self.prefix!r})"

    def key(self, *parts: str) -> str:
        """This run's key made of ``parts``: ``<prefix><part>:<part>...``."""
        return self.prefix + ":".join(parts)

    def client(self) -> redis.Redis:
        """A client of this process (a new one after a fork); commands raise
        :class:`StoreUnavailable` when the server is gone, unreachable or refuses us."""
        pid = os.getpid()
        cached = self._client
        if cached is not None and cached[0] == pid:
            return cached[1]
        clients = _process_state()["clients"]  # one per server and process, for every store
        found = clients.get(self.url)
        if found is None or found[0] != pid:
            found = clients[self.url] = (pid, _connect(self.url))  # a race makes two: harmless
        self._client = found
        return found[1]

    def scan_keys(self) -> list[str]:
        """Every key of this run (SCAN, so the server keeps serving others meanwhile)."""
        return [k.decode() for k in self.client().scan_iter(match=_glob_escape(self.prefix)
                                                            + "*", count=1000)]

    def delete_keys(self) -> int:
        """Delete every key of this run; how many there were."""
        keys = self.scan_keys()
        for start in range(0, len(keys), 1000):
            self.client().unlink(*keys[start:start + 1000])
        return len(keys)


def _unpickle_store(url: str, prefix: str) -> Store:
    """A store from its pickle; on a worker, primitives made later in this process (by
    :func:`get_store`) use the first one seen."""
    state = _process_state()
    if state["seen"] is None:
        state["seen"] = (url, prefix)
    return Store(url, prefix)


def configure_store(*, redis_url: str | None = None, host: str | None = None,
                    maxmemory: str = "1gb") -> None:
    """Options of the store, before the first primitive that needs shared state.

    :param redis_url: an existing Redis to use (``redis://:<password>@host:port/db``); this
        run's keys get their own prefix and are deleted at exit. Default ``$PONCHO_REDIS_URL``,
        else a ``redis-server`` started here.
    :param host: the address the started server listens on, which workers must reach
        (default: the loaded PonchoExecutor's ``address``, else this host's name; 127.0.0.1
        for the embedded executor's local workers).
    :param maxmemory: the started server's ``maxmemory``; writes beyond it fail with an OOM
        error rather than evicting keys.
    :raises StoreUnavailable: the store is in use already.

    >>> import parsl_poncho.multiprocessing as mp
    >>> mp.configure_store(redis_url="redis://:secret@db.example:6379/0")  # doctest: +SKIP
    """
    state = _process_state()
    with state["lock"]:
        if state["store"] is not None:
            raise StoreUnavailable("the store is in use already: call configure_store() "
                                   "before the first Queue, Lock, Manager or Process")
        state["options"] = {"redis_url": redis_url, "host": host, "maxmemory": maxmemory}


def get_store() -> Store:
    """This run's store, started (or connected to) on first use.

    :raises StoreUnavailable: ``redis-server`` is not installed or does not start, or the
        given Redis cannot be reached (the message says what to do).
    """
    state = _process_state()
    store = state["store"]
    if store is not None:
        return store
    with state["lock"]:
        if state["store"] is None:
            if state["seen"] is not None:  # on a worker: the driver's store
                state["store"] = Store(*state["seen"])
            else:
                state["store"] = _open_store(dict(state["options"]))
        return state["store"]


def _open_store(options: dict[str, Any]) -> Store:
    url = options.get("redis_url") or os.environ.get(URL_ENV)
    server = None
    if not url:
        try:
            server_module = importlib.import_module(_SERVER_MODULE)
        except ImportError as exc:  # a worker: no parsl_poncho, no store of the driver's
            raise StoreUnavailable(
                "no store is known in this process (a worker?): make shared-state objects in "
                "the driver and pass them to the workers, or set PONCHO_REDIS_URL") from exc
        server = server_module.start_server(options.get("host"),
                                            options.get("maxmemory") or "1gb")
        url = server.url
    store = Store(url, f"poncho:{secrets.token_hex(6)}:")
    try:
        store.client().ping()
    except StoreUnavailable:
        if server is not None:
            server.stop()
        raise
    atexit.register(_close_store, store, server)
    return store


def _close_store(store: Store, server: Any) -> None:
    """At exit: delete this run's keys, stop the server we started."""
    state = _process_state()
    with state["lock"]:
        if state["store"] is store:
            state["store"] = None
    try:
        store.delete_keys()
    except StoreUnavailable:
        pass  # gone already: nothing is left to delete
    if server is not None:
        server.stop()


# -- the client ---------------------------------------------------------------------------------
_FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _explain(exc: BaseException, url: str) -> StoreUnavailable:
    where = _redact(url)
    if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in str(exc) \
            or "WRONGPASS" in str(exc):
        return StoreUnavailable(f"the store at {where} refused the password ({exc}); check "
                                "the password in redis_url / $PONCHO_REDIS_URL")
    return StoreUnavailable(
        f"the shared-state store at {where} is unavailable ({type(exc).__name__}: {exc}). "
        "The redis-server this run started was stopped or killed, or the host is unreachable "
        "from here; the state it held is lost")


def _connect(url: str) -> redis.Redis:
    return _Client.from_url(
        url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5.0, socket_keepalive=True,
        health_check_interval=30, retry=Retry(NoBackoff(), 0))  # never resend a command


class _Pipeline(redis.client.Pipeline):
    def execute(self, raise_on_error: bool = True) -> list:
        try:
            return super().execute(raise_on_error)
        except _FAILURES as exc:
            raise _explain(exc, self._poncho_url) from exc
        except redis.exceptions.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise _explain(exc, self._poncho_url) from exc
            raise


#: Blocking commands whose last argument is the timeout (0: forever).
_BLOCKING = frozenset({"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX"})


class _Client(redis.Redis):
    """``redis.Redis`` whose failures to reach the server raise :class:`StoreUnavailable`, and
    whose blocking commands wait any timeout (0: forever) in round trips of at most
    :data:`BLOCK_SLICE` seconds, so a vanished server is noticed within seconds."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]).upper() if args else ""
        if name in _BLOCKING:
            return self._sliced(args, options)
        return self._execute(*args, **options)

    def _sliced(self, args: tuple, options: dict) -> Any:
        timeout = float(args[-1])
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while True:
            wait = BLOCK_SLICE if deadline is None else min(BLOCK_SLICE,
                                                            deadline - time.monotonic())
            if wait <= 0:
                return None
            result = self._execute(*args[:-1], wait, **options)
            if result is not None:
                return result

    def _execute(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)
        except _FAILURES as exc:
            raise _explain(exc, self._poncho_url()) from exc
        except redis.exceptions.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise _explain(exc, self._poncho_url()) from exc
            raise

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> _Pipeline:
        pipe = _Pipeline(self.connection_pool, self.response_callbacks, transaction,
                         shard_hint)
        pipe._poncho_url = self._poncho_url()
        return pipe

    def _poncho_url(self) -> str:
        kw = self.connection_pool.connection_kwargs
        return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def _redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# Workers unpickle the store and the primitives without parsl_poncho installed.
if __name__ not in cloudpickle.list_registry_pickle_by_value():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
