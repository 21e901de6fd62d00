"""``Pipe`` and the driver's ``Connection``: the standard library's pipes, across the cluster.

An end used in the driver talks over one of three transports, chosen at its first use:

- **local**: both ends are used in the driver (threads): a standard library ``Pipe``;
- **direct**: the other end was given to a ``Process`` and is used there: the connection the
  Process's copy of that end opened to the driver's hub (``hub.py``) *is* the pipe, a TCP
  connection between the two ends (``multiprocessing.connection``, authkey): one hop, no
  broker, no polling;
- **gone**: the other end is closed here and no Process holds it: ``recv`` raises
  ``EOFError``, ``send`` ``BrokenPipeError``, as in the standard library.

An end in a Process (``_remote.RemoteEnd``) connects to the hub on its first use; the hub
makes it the direct pipe to the driver's copy of the other end once that copy is used here,
or closed while no Process holds it (the Process then reads EOF). Until then it waits: the
driver may still use that copy (as ``SubprocVecEnv``'s parent does after handing both ends to
the child, which closes the parent's). When both ends are used in Processes (the driver
closed its copy of the other end, or the other end's Process connected too), the pipe goes
through the store instead: two Redis lists, ``RPUSH`` and ``BLPOP`` (``_remote._StoreLink``);
an end-of-file mark is pushed when an end closes or its Process ends.

Closing a copy of an end that was never used does nothing to the other end (another copy may
be in use), as closing one of several file descriptors of a pipe does nothing.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
import uuid
from typing import Any

from parsl_poncho.multiprocessing import _remote

__all__ = ["Connection", "Pipe", "carried_by"]

_pipes: dict[str, _PipeState] = {}
_pipes_lock = threading.Lock()
_carrier = threading.local()  # the Process whose start is pickling its arguments
_UNKNOWN = "a process that is not a parsl_poncho Process"
_GONE = object()
_ids = itertools.count()


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - the stdlib's name
    """A pair of connected ends, as ``multiprocessing.Pipe``: with ``duplex=False`` the first
    only receives and the second only sends. Either end can be passed to a ``Process``."""
    state = _PipeState(duplex)
    with _pipes_lock:
        _pipes[state.id] = state
    return Connection(state, 0), Connection(state, 1)


class carried_by:  # noqa: N801 - a context manager, named as a phrase
    """While it is active, ends pickled in this thread are known to travel in ``process``."""

    def __init__(self, process: Any) -> None:
        self.process = process

    def __enter__(self) -> None:
        _carrier.process = self.process

    def __exit__(self, *exc: Any) -> None:
        _carrier.process = None


class _PipeState:
    """One pipe as the driver knows it: where copies of each end are, and its transport."""

    def __init__(self, duplex: bool) -> None:
        self.id = f"{uuid.uuid4().hex[:12]}-{next(_ids)}"
        self.duplex = duplex
        self.cond = threading.Condition()
        self.open = [True, True]  # the driver's copy of each end
        self.used = [False, False]  # ... has been used here
        self.holders: list[list[Any]] = [[], []]  # Processes given a copy of each end
        self.waiting: list[Any] = [None, None]  # a Process's copy, connected, not answered
        self.mode: str | None = None  # "local", "direct" or "store"
        self.store_users: list[tuple[str | None, int]] = []  # (Process key, side) via the store
        self.links: list[Any] = [None, None]  # the driver's store links, in store mode
        self.local: tuple[Any, Any] | None = None
        self.direct: tuple[int, Any] | None = None  # (the driver's side, its connection)

    def held_elsewhere(self, side: int) -> bool:
        """Whether a Process that may still use a copy of ``side`` runs (or will)."""
        return any(h is _UNKNOWN or h._p_exitcode is None for h in self.holders[side])

    # -- the driver's side -------------------------------------------------------------------
    def transport(self, side: int, timeout: float | None) -> Any:
        """The connection the driver's ``side`` uses (``_GONE``: the other end is gone; None:
        not known within ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        peer = 1 - side
        with self.cond:
            self.used[side] = True
            while True:
                if self.mode == "local":
                    return self.local[side]
                if self.mode == "store":
                    if self.links[side] is None:
                        self.links[side] = _remote._StoreLink(*self.store_route(side))
                    return self.links[side]
                if self.mode == "direct":
                    if self.direct[0] == side:
                        return self.direct[1]
                    raise OSError("this end of the Pipe was used in a Process, which talks to "
                                  "the driver's other end: use each end in one process")
                if self.waiting[peer] is not None:
                    self._go_direct(side)
                    continue
                if not self.held_elsewhere(peer):
                    if not self.open[peer]:
                        return _GONE
                    self.mode = "local"
                    self.local = multiprocessing.Pipe(self.duplex)
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.cond.wait(0.2 if left is None else min(left, 0.2))  # holders may end

    def _go_direct(self, side: int) -> None:
        conn = self.waiting[1 - side][0]
        self.waiting[1 - side] = None
        self.mode, self.direct = "direct", (side, conn)
        conn.send(("direct",))
        self.cond.notify_all()

    def store_route(self, side: int) -> tuple[str, str, str]:
        """``(url, inbox, outbox)`` of ``side`` through the store."""
        store = _get_store()
        return (store.url, store.key("pipe", self.id, f"to{side}"),
                store.key("pipe", self.id, f"to{1 - side}"))

    def _go_store(self, *arrivals: tuple[int, Any, str | None]) -> None:
        """Both ends are in Processes: answer every copy waiting (and ``arrivals``) with the
        route through the store."""
        self.mode = "store"
        waiting = [(s, *w) for s, w in enumerate(self.waiting) if w is not None]
        self.waiting = [None, None]
        for side, conn, key in (*waiting, *arrivals):
            self.store_users.append((key, side))
            try:
                conn.send(("store", *self.store_route(side)))
            finally:
                conn.close()
        self.cond.notify_all()

    def ended(self, key: str) -> None:
        """Process ``key`` ended: what it held through the store reads EOF on the other side."""
        with self.cond:
            sides = [side for k, side in self.store_users if k == key]
        for side in sides:
            _get_store().client().rpush(self.store_route(side)[2], b"e")

    def close(self, side: int) -> None:
        """The driver closes its copy of ``side``."""
        with self.cond:
            if not self.open[side]:
                return
            self.open[side] = False
            if self.mode == "local":
                self.local[side].close()
            elif self.mode == "direct" and self.direct[0] == side:
                self.direct[1].close()
            elif self.mode == "store" and self.links[side] is not None:
                self.links[side].close()
            elif self.waiting[1 - side] is not None and not self.held_elsewhere(side):
                self._go_direct(side)  # the Process's end reads EOF
                self.direct[1].close()
            elif self.waiting[1 - side] is not None:
                self._go_store()  # this end lives on in a Process
            self.cond.notify_all()
        if self.finished():
            with _pipes_lock:
                _pipes.pop(self.id, None)

    def finished(self) -> bool:
        """Whether no copy of either end can be used any more (the driver's are closed, no
        Process holding one runs, none is connected)."""
        with self.cond:
            return (not any(self.open) and not any(self.waiting) and self.mode != "direct"
                    and not self.held_elsewhere(0) and not self.held_elsewhere(1))

    # -- a Process's side (the hub's thread) ---------------------------------------------------
    def attach(self, side: int, conn: Any, key: str | None) -> None:
        """A Process's copy of ``side`` (in Process ``key``) connected: make it the pipe, send
        it to the store, or park it until that is known."""
        peer = 1 - side
        with self.cond:
            if self.mode == "store":
                self._go_store((side, conn, key))
            elif self.mode is not None or self.waiting[side] is not None:
                _refuse(conn, "this Pipe end is already in use in another process; use each "
                              "end of a Pipe in one process")
            elif self.used[peer] or (self.open[peer] and not self.held_elsewhere(peer)):
                self.waiting[side] = (conn, key)
                self._go_direct(peer)
                if not self.open[peer]:
                    conn.close()
            elif not self.open[peer] or self.waiting[peer] is not None:
                self._go_store((side, conn, key))
            else:
                self.waiting[side] = (conn, key)  # answered once the driver uses or closes peer
            self.cond.notify_all()


def _refuse(conn: Any, why: str) -> None:
    try:
        conn.send(("refused", why))
    finally:
        conn.close()


def attach_remote(hello: tuple, conn: Any) -> None:
    """The hub's handler for ``("pipe", pipe_id, side)``."""
    with _pipes_lock:
        state = _pipes.get(hello[1])
    if state is None:
        _refuse(conn, "the driver has closed both ends of this Pipe")
        return
    state.attach(int(hello[2]), conn, hello[3] if len(hello) > 3 else None)


def process_ended(key: str) -> None:
    """Process ``key`` ended: its ends that went through the store read EOF on the far side."""
    with _pipes_lock:
        states = [s for s in _pipes.values() if any(k == key for k, _ in s.store_users)]
    for state in states:
        state.ended(key)
    with _pipes_lock:
        for pipe_id in [i for i, s in _pipes.items() if s.finished()]:
            del _pipes[pipe_id]


def _get_store() -> Any:
    from parsl_poncho.multiprocessing.store import get_store

    return get_store()


class Connection:
    """The driver's end of a :func:`Pipe`, as ``multiprocessing.connection.Connection``."""

    def __init__(self, state: _PipeState, side: int) -> None:
        self._state, self._side = state, side
        self._readable = state.duplex or side == 0
        self._writable = state.duplex or side == 1
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} pipe={self._state.id} side={self._side}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def readable(self) -> bool:
        """Whether this end can receive."""
        return self._readable

    @property
    def writable(self) -> bool:
        """Whether this end can send."""
        return self._writable

    def _conn(self, readable: bool, timeout: float | None = None) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        if readable and not self._readable:
            raise OSError("connection is write-only")
        if not readable and not self._writable:
            raise OSError("connection is read-only")
        return self._state.transport(self._side, timeout)

    def send(self, obj: Any) -> None:
        """Send a picklable object to the other end."""
        self._sending().send(obj)

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send bytes of a bytes-like object, as one message."""
        self._sending().send_bytes(buf, offset, size)

    def _sending(self) -> Any:
        conn = self._conn(False)
        if conn is _GONE:
            raise BrokenPipeError(32, "Broken pipe")
        return conn

    def recv(self) -> Any:
        """The next object sent by the other end; blocks until there is one.

        :raises EOFError: the other end is closed and nothing is left to receive.
        """
        return self._receiving().recv()

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """The next message's bytes (see :meth:`recv`)."""
        return self._receiving().recv_bytes(maxlength)

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Read the next message's bytes into ``buf``; their number."""
        return self._receiving().recv_bytes_into(buf, offset)

    def _receiving(self) -> Any:
        conn = self._conn(True)
        if conn is _GONE:
            raise EOFError
        return conn

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is something to receive (or EOF), waiting up to ``timeout`` seconds
        (None: forever)."""
        start = time.monotonic()
        conn = self._conn(True, timeout)
        if conn is None:
            return False
        if conn is _GONE:
            return True
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return conn.poll(left)

    def fileno(self) -> int:
        """The file descriptor of this end's transport (waits for it to be known).

        :raises OSError: the other end is gone, so there is no descriptor.
        """
        conn = self._conn(self._readable)
        if conn is _GONE:
            raise OSError("the other end of this Pipe is closed: no file descriptor")
        return conn.fileno()

    def close(self) -> None:
        """Close this end (the other end then reads EOF, once this copy was the one in use)."""
        if not self._closed:
            self._closed = True
            self._state.close(self._side)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def remote_end(self, process: Any = None) -> _remote.RemoteEnd:
        """The copy of this end that a Process gets (``process``: the one carrying it)."""
        from parsl_poncho.multiprocessing.hub import hub_for
        from parsl_poncho.multiprocessing.link import current_executor

        if self._closed:
            raise OSError("handle is closed")
        hub = hub_for(current_executor())
        hub.on("pipe", attach_remote)
        with self._state.cond:
            self._state.holders[self._side].append(process or _UNKNOWN)
        return _remote.RemoteEnd(self._state.id, self._side, self._readable, self._writable,
                                 hub.remote)

    def __reduce__(self) -> tuple:
        return self.remote_end(getattr(_carrier, "process", None)).__reduce__()
