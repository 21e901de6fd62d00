"""The driver's hub: the one TCP port that Process tasks and Pipe ends on workers connect to.

A ``multiprocessing.connection.Listener`` with a random 32-byte authkey per driver process
(HMAC challenge both ways: a client without the key is refused before it can send anything).
It listens on every interface and is reached at the address the workers reach the Work Queue
manager at (the executor's ``address``, else this host's name), so any worker that can
connect to the manager can connect to it. The key travels to workers inside the pickled
calls, through Work Queue, as the functions themselves do.

Each connection says who it is in its first message (see ``_remote.py``): a Process task's
runner is handed to its :class:`~parsl_poncho.multiprocessing.process.Process`, a Pipe end's
first use to its pipe (``connection.py``), which makes that very connection the pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener, answer_challenge, deliver_challenge
from typing import Any, Callable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_hubs: dict[str, Hub] = {}


class Hub:
    """One listener and its accept thread; handlers by the first word of a client's hello.

    :param host: the name or address workers reach this host at.
    """

    def __init__(self, host: str) -> None:
        from parsl_poncho.multiprocessing import _remote

        register_by_value(_remote)
        self.authkey = os.urandom(32)
        # No authkey on the Listener: its accept() would run the handshake on the one accept
        # thread, where a client that connects and stays silent stalls every later one.
        self._listener = Listener(("", 0), family="AF_INET", backlog=128)
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self.address = (host, self._listener.address[1])
        self.remote = _remote.Hub((host, self._listener.address[1], self.authkey))
        self._handlers: dict[str, Callable[[tuple, Any], None]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name=f"poncho-mp-hub-{self.address[1]}")
        self._thread.start()

    def on(self, kind: str, handler: Callable[[tuple, Any], None]) -> None:
        """Call ``handler(hello, conn)`` (in a thread of its own) for clients saying ``kind``."""
        self._handlers[kind] = handler

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                # accept(2): a connection that failed while queued, or out of descriptors
                logger.warning("hub: accept failed, retrying: %s", exc)
                time.sleep(0.1)
                continue
            if not self._handshakes.acquire(blocking=False):
                logger.warning("hub: %d clients are mid-handshake; dropped one more",
                               MAX_HANDSHAKES)
                conn.close()
                continue
            _keepalive(conn)
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name="poncho-mp-hub-client").start()
            except RuntimeError:  # no thread to be had
                self._handshakes.release()
                conn.close()

    def _serve(self, conn: Any) -> None:
        try:
            with _receive_timeout(conn, HANDSHAKE_TIMEOUT):
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
        except (AuthenticationError, EOFError, OSError) as exc:
            reason = (f"silent for {HANDSHAKE_TIMEOUT:.0f} s"
                      if isinstance(exc, BlockingIOError) else str(exc) or type(exc).__name__)
            logger.warning("hub: refused a client: %s", reason)
            conn.close()
            return
        finally:
            self._handshakes.release()
        try:
            hello = conn.recv()
            handler = self._handlers.get(hello[0]) if isinstance(hello, tuple) else None
        except (EOFError, OSError, IndexError):
            conn.close()
            return
        if handler is None:
            logger.warning("hub: unknown client %r", hello)
            conn.close()
            return
        try:
            handler(hello, conn)
        except Exception:  # noqa: BLE001 - the client must not wait for an answer forever
            logger.exception("hub: handling %r failed", hello[:2])
            conn.close()

    def close(self) -> None:
        """Stop listening (connections already made stay open)."""
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass


#: A client silent this many seconds during the key handshake is dropped (per read, so a
#: client that trickles bytes lasts longer, but holds only its own thread).
HANDSHAKE_TIMEOUT = 10.0
#: Clients in the handshake at once; more are dropped at once (a flood holds no threads).
MAX_HANDSHAKES = 64


@contextlib.contextmanager
def _receive_timeout(conn: Any, seconds: float) -> Iterator[None]:
    """SO_RCVTIMEO on a connection's socket for a ``with`` block (reads then fail with
    ``BlockingIOError`` instead of blocking forever); the connection blocks normally after."""
    def timeval(value: float) -> bytes:
        return struct.pack("ll", int(value), int((value - int(value)) * 1e6))

    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(seconds))
        try:
            yield
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0))


#: TCP keepalive of the hub's connections: idle seconds, probe interval, probes. A node that
#: vanishes without closing its sockets (power, network) ends them within ~30 s.
KEEPALIVE = (10, 5, 4)


def _keepalive(conn: Any) -> None:
    """Turn on TCP keepalive for an accepted connection (Linux options; best effort)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:
        return
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"),
                                     KEEPALIVE):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        except OSError:
            pass


def hub_for(executor: Any) -> Hub:
    """The hub of this driver process, reached where the executor's workers reach its
    manager (started on first use, closed at exit)."""
    host = getattr(executor, "address", None) or socket.gethostname()
    with _lock:
        hub = _hubs.get(host)
        if hub is None:
            hub = _hubs[host] = Hub(host)
            if len(_hubs) == 1:
                atexit.register(_close_all)
        return hub


def _close_all() -> None:
    with _lock:
        hubs = list(_hubs.values())
        _hubs.clear()
    for hub in hubs:
        hub.close()


def register_by_value(module: Any) -> None:
    """Have cloudpickle pickle ``module`` by value (worker-side code of this package)."""
    import cloudpickle

    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)
