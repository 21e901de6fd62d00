"""What a ``Process`` and a ``Pipe`` end are on a worker: the process runner and a remote end.

cloudpickle pickles this module BY VALUE (``hub.py`` registers it), so workers need neither
parsl nor parsl_poncho: only the standard library. Keep it free of imports from the package.

Both talk to the driver's hub (``hub.py``) with the standard library's
``multiprocessing.connection.Client`` and the run's authkey (an HMAC challenge both ways), and
say who they are in their first message:

``("process", key)``
    the task of Process ``key``; the hub answers ``"run"`` (or ``"stop"``: it was terminated
    before it started, or this is Work Queue's rerun of a task whose first run the driver
    saw end). The runner forks the target's process (as the standard library's ``fork``
    start method does, so the exit code, signals and node-local shared memory behave as
    there), then sends ``("started", pid)``, ``("out", fd, bytes)`` for what the target
    writes to stdout/stderr, and ``("exit", code)``. From the hub it gets
    ``("signal", signum)`` (terminate, kill). EOF from the hub (the driver is gone): the
    target is killed, since no one can join it.
``("pipe", pipe_id, side)``
    the first use of a Pipe end here; the hub answers ``("direct",)``: this connection *is*
    the pipe (its other end is the driver's end of the Pipe: one hop); ``("store", url,
    inbox, outbox)``: the other end is in another Process, so the two talk through two Redis
    lists of the store (``_StoreLink``); or ``("refused", why)``.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pickle
import signal
import sys
import threading
import types
from typing import Any, Callable

PR_SET_PDEATHSIG = 1
#: Set in a Process's target: its key, which its Pipe ends name to the hub.
PROCESS_KEY_ENV = "PARSL_PONCHO_PROCESS_KEY"
#: A blocking store read waits at most this long per round trip (a lost store shows).
BLOCK_SLICE = 5.0


class Hub(tuple):
    """``(host, port, authkey)``: where the driver's hub listens, and the run's key."""

    def connect(self, hello: tuple) -> Any:
        from multiprocessing.connection import Client

        conn = Client((self[0], self[1]), authkey=self[2])
        conn.send(hello)
        return conn


class ProcessInfo(tuple):
    """``(key, name, daemon, hub, parent_pid, parent_name)`` of a Process, as its task gets it."""


# -- the process runner -------------------------------------------------------------------------
def run_process(info: ProcessInfo, target: Callable | None, args: tuple, kwargs: dict
                ) -> int | None:
    """On the worker: run a Process's target in a forked child; its exit code, reported to the
    driver as it happens (None: the driver said not to run it)."""
    conn = info[3].connect(("process", info[0]))
    if conn.recv() != "run":
        conn.close()
        return None
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the target's process
        code = 1
        try:
            conn.close()
            os.close(out_r)
            os.close(err_r)
            _die_with_parent()
            os.environ[PROCESS_KEY_ENV] = info[0]
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            code = _bootstrap(info, target, args, kwargs)
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    lock = threading.Lock()
    send = _locked_send(conn, lock)
    send(("started", pid))
    readers = [threading.Thread(target=_forward, args=(fd, n, send), daemon=True)
               for n, fd in ((1, out_r), (2, err_r))]
    for reader in readers:
        reader.start()
    threading.Thread(target=_obey, args=(conn, pid), daemon=True).start()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(5)  # what it wrote last goes before its exit code
    try:
        send(("exit", code))
    except OSError:
        pass  # the driver is gone
    conn.close()
    return code


def _locked_send(conn: Any, lock: threading.Lock) -> Callable[[Any], None]:
    def send(message: Any) -> None:
        with lock:
            conn.send(message)
    return send


def _forward(fd: int, which: int, send: Callable[[Any], None]) -> None:
    """What the target writes to ``fd`` goes to the driver's stdout (1) or stderr (2)."""
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        try:
            send(("out", which, data))
        except OSError:
            break
    os.close(fd)


def _obey(conn: Any, pid: int) -> None:
    """Signals from the driver go to the target; if the driver is gone, the target is killed."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            _signal(pid, signal.SIGKILL)
            return
        if message[0] == "signal":
            _signal(pid, int(message[1]))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """The target dies with its runner (a node or worker lost takes both down)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _bootstrap(info: ProcessInfo, target: Callable | None, args: tuple, kwargs: dict) -> int:
    """Run the target as the standard library's ``BaseProcess._bootstrap`` does: 0 when it
    returns, ``sys.exit``'s code, 1 (and the traceback on stderr) when it raises."""
    import multiprocessing.process as stdlib_process
    import traceback

    _become_child(stdlib_process, info)
    try:
        sys.stdin.close()
        sys.stdin = open(os.devnull)  # noqa: SIM115 - as the stdlib's child
    except (OSError, ValueError):
        pass
    try:
        if target is not None:
            target(*args, **kwargs)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write(str(exc.code) + "\n")
            code = 1
    except BaseException:  # noqa: BLE001 - as the stdlib: any exception is exit code 1
        code = 1
        sys.stderr.write(f"Process {info[1]}:\n")
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    return code


def _become_child(stdlib_process: types.ModuleType, info: ProcessInfo) -> None:
    """The standard library's ``current_process()`` here is this Process (name, daemon), and
    its ``parent_process()`` names the driver."""
    me = stdlib_process.current_process()
    me._config = dict(me._config, daemon=bool(info[2]))
    me._name = info[1]
    me._parent_pid = info[4]
    stdlib_process._parent_process = stdlib_process._ParentProcess(info[5], info[4], None)
    stdlib_process._children = set()


# -- a Pipe end away from the driver ---------------------------------------------------------
class RemoteEnd:
    """A Pipe end in a worker's process: on first use it connects to the driver's hub, which
    makes that connection the pipe to the driver's end (one hop). Closing an end never used
    here does nothing to its peer (another copy of it may be in use: the driver's)."""

    def __init__(self, pipe_id: str, side: int, readable: bool, writable: bool,
                 hub: Hub) -> None:
        self._pipe_id, self._side, self._hub = pipe_id, side, hub
        self.readable, self.writable = readable, writable
        self._conn: Any = None
        self._closed = False

    def __reduce__(self) -> tuple:
        return (RemoteEnd, (self._pipe_id, self._side, self.readable, self.writable, self._hub))

    def _attach(self) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        if self._conn is None:
            conn = self._hub.connect(("pipe", self._pipe_id, self._side,
                                      os.environ.get(PROCESS_KEY_ENV)))
            reply = conn.recv()
            if reply[0] == "store":
                conn.close()
                conn = _StoreLink(*reply[1:])
            elif reply[0] != "direct":
                conn.close()
                raise OSError(f"Pipe end cannot be used here: {reply[1]}")
            self._conn = conn
        return self._conn

    def _check(self, readable: bool) -> Any:
        if self._closed:
            raise OSError("handle is closed")
        if readable and not self.readable:
            raise OSError("connection is write-only")
        if not readable and not self.writable:
            raise OSError("connection is read-only")
        return self._attach()

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, obj: Any) -> None:
        self._check(False).send(obj)

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        self._check(False).send_bytes(buf, offset, size)

    def recv(self) -> Any:
        return self._check(True).recv()

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        return self._check(True).recv_bytes(maxlength)

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        return self._check(True).recv_bytes_into(buf, offset)

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self._check(True).poll(timeout)

    def fileno(self) -> int:
        return self._attach().fileno()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._conn is not None:
                self._conn.close()

    def __enter__(self) -> RemoteEnd:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and not self._closed:
            conn.close()


class _StoreLink:
    """A Pipe end's transport through the store, when both ends are in Processes: a message
    is one ``RPUSH`` onto the other end's list and one ``BLPOP`` there (no polling); closing
    pushes an end-of-file mark (the hub pushes one too when a Process ends without closing).

    :param url: the store's URL (with its password); ``inbox``/``outbox``: the two list keys.
    """

    def __init__(self, url: str, inbox: str, outbox: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=BLOCK_SLICE + 5)
        self._inbox, self._outbox = inbox, outbox
        self._held: collections.deque = collections.deque()
        self._eof = False

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        view = memoryview(buf).cast("B")
        end = len(view) if size is None else offset + size
        if offset < 0 or end > len(view) or end < offset:
            raise ValueError("buffer length < offset + size")
        self._client.rpush(self._outbox, b"m" + bytes(view[offset:end]))

    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj))

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or EOF) is there, waiting up to ``timeout`` (None: forever)."""
        if self._held or self._eof:
            return True
        if timeout is not None and timeout <= 0:
            item = self._client.lpop(self._inbox)
        else:
            item = self._blpop(timeout)
        if item is None:
            return False
        if item[:1] == b"e":
            self._eof = True
        else:
            self._held.append(item[1:])
        return True

    def _blpop(self, timeout: float | None) -> bytes | None:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = BLOCK_SLICE if deadline is None else min(BLOCK_SLICE,
                                                            deadline - time.monotonic())
            if left <= 0:
                return None
            got = self._client.blpop([self._inbox], timeout=max(left, 0.01))
            if got is not None:
                return got[1]

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        self.poll(None)
        if not self._held:
            raise EOFError
        data = self._held.popleft()
        if maxlength is not None and len(data) > maxlength:
            raise OSError("bad message length")
        return data

    def recv(self) -> Any:
        return pickle.loads(self.recv_bytes())

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        from multiprocessing import BufferTooShort

        data = self.recv_bytes()
        view = memoryview(buf).cast("B")
        if len(view) - offset < len(data):
            raise BufferTooShort(data)
        view[offset:offset + len(data)] = data
        return len(data)

    def fileno(self) -> int:
        raise OSError("a Pipe end that talks through the store has no file descriptor")

    def close(self) -> None:
        try:
            self._client.rpush(self._outbox, b"e")
        finally:
            self._client.close()
