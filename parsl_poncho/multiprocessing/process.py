"""``Process``: the standard library's process, run as one long Work Queue task on a worker.

Mirrors CPython's ``Lib/multiprocessing/process.py``. ``start()`` submits one task to the
PonchoExecutor (analysed like any app, so the target's imports are in its environment), in
serverless mode: the node's function server for that environment forks the task's process
from a heap with the target's modules imported already (a process starts in milliseconds once
a node has the environment), and it kills the task's process group as soon as the task's
Work Queue worker is gone (a regular-mode task outlives a killed worker), so a lost worker
shows up here at once.

On the worker the task (``_remote.run_process``) connects to the driver's hub (``hub.py``),
forks the target's process as the standard library's ``fork`` start method does, forwards
its stdout and stderr here, and reports its exit code. That connection is how ``terminate``
and ``kill`` reach it (a signal, sent at once) and how the end of a worker is seen (EOF
without an exit code: ``exitcode`` is ``-SIGKILL``). A task does not hold a Work Queue core
(``cores: 0``): processes are not a pool's slots, as OS processes are not; pass
``resources=`` to reserve what a heavy target needs.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import types
import uuid
from typing import Any, Callable, Mapping, Sequence

from parsl_poncho.exec_modes import EXEC_MODE_KEY
from parsl_poncho.multiprocessing import _remote
from parsl_poncho.multiprocessing.connection import Connection, carried_by, process_ended

__all__ = ["Process", "active_children", "current_process", "parent_process"]

logger = logging.getLogger(__name__)

_counter = itertools.count(1)
_lock = threading.Lock()
_running: dict[str, Process] = {}  # started, not ended: what the hub can hand a task to
_children: set[Process] = set()  # started here, not yet reaped (active_children)
_atexit_registered = False
#: A process task's default resources: no core held (see the module's docstring).
DEFAULT_RESOURCES: Mapping[str, Any] = {"cores": 0, "memory": 0}


def current_process() -> Any:
    """The standard library's ``current_process()``: ``MainProcess`` in the driver; in a
    Process's target, that Process (its name and ``daemon``)."""
    return multiprocessing.current_process()


def parent_process() -> Any:
    """The standard library's ``parent_process()``: None in the driver; in a Process's
    target, the driver (its name and pid)."""
    return multiprocessing.parent_process()


def active_children() -> list[Process]:
    """The Processes started here that have not ended (the ended ones are forgotten)."""
    with _lock:
        ended = [p for p in _children if p._p_exitcode is not None]
        for p in ended:
            _children.discard(p)
        return list(_children)


class Process:
    """A process on a PonchoExecutor worker, as ``multiprocessing.Process``.

    :param group: must be None (as the standard library's).
    :param target: called as ``target(*args, **kwargs)`` in the process (by :meth:`run`).
    :param name: default ``Process-N``.
    :param daemon: daemon processes are terminated when the driver exits; others are joined.
    :param resources: (ours) the task's Parsl resource specification (default: no core held).
    """

    def __init__(self, group: None = None, target: Callable | None = None,
                 name: str | None = None, args: Sequence[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, *, daemon: bool | None = None,
                 resources: Mapping[str, Any] | None = None) -> None:
        if group is not None:
            raise AssertionError("group argument must be None for now")
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs or {})
        self._p_number = next(_counter)
        self._name = name or f"Process-{self._p_number}"
        self._daemon = bool(daemon) if daemon is not None else False
        self._p_resources = dict(resources if resources is not None else DEFAULT_RESOURCES)
        self._p_key = uuid.uuid4().hex
        self._p_lock = threading.Lock()
        self._p_done = threading.Event()
        self._p_future: Any = None
        self._p_conn: Any = None
        self._p_pid: int | None = None
        self._p_exitcode: int | None = None
        self._p_closed = False
        self._p_sentinel: tuple[int, int] | None = None

    def __repr__(self) -> str:
        if self._p_closed:
            status = "closed"
        elif self._p_future is None:
            status = "initial"
        elif self._p_exitcode is None:
            status = "started"
        else:
            status = f"stopped exitcode={self._p_exitcode}"
        return f"<{type(self).__name__} name={self._name!r} {status}{' daemon' * self._daemon}>"

    def __getstate__(self) -> dict:
        """A subclass's own attributes travel with :meth:`run`; the driver's state does not."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_p_")}

    def run(self) -> None:
        """What the process does: ``target(*args, **kwargs)`` (override in a subclass)."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    # -- attributes ------------------------------------------------------------------------------
    def _check_closed(self) -> None:
        if self._p_closed:
            raise ValueError("process object is closed")

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise AssertionError("name must be a string")
        self._name = value

    @property
    def daemon(self) -> bool:
        return self._daemon

    @daemon.setter
    def daemon(self, value: bool) -> None:
        if self._p_future is not None:
            raise AssertionError("process has already started")
        self._daemon = bool(value)

    @property
    def pid(self) -> int | None:
        """The process's pid on its node (None until it runs there)."""
        self._check_closed()
        return self._p_pid

    ident = pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; then its exit code, or ``-N`` if signal N ended it."""
        self._check_closed()
        return self._p_exitcode

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the process ends."""
        self._check_closed()
        if self._p_sentinel is None:
            raise ValueError("process not started")
        return self._p_sentinel[0]

    # -- start, and the task's life --------------------------------------------------------------
    def start(self) -> None:
        """Submit the process's task; returns at once.

        :raises TaskSerializationError: the target or an argument cannot be pickled.
        :raises AnalysisError: what the target needs cannot be worked out.
        """
        from parsl_poncho.multiprocessing.hub import hub_for
        from parsl_poncho.multiprocessing.link import current_executor

        self._check_closed()
        if self._p_future is not None:
            raise AssertionError("cannot start a process twice")
        executor = current_executor()
        hub = hub_for(executor)
        hub.on("process", _hello)
        _register_exit()
        info = _remote.ProcessInfo((self._p_key, self._name, self._daemon, hub.remote,
                                    os.getpid(), multiprocessing.current_process().name))
        target = self._target if type(self).run is Process.run else self.run
        args = tuple(self._carried(a) for a in self._args)
        kwargs = {k: self._carried(v) for k, v in self._kwargs.items()}
        spec = {**self._p_resources, EXEC_MODE_KEY: "serverless"}
        self._p_sentinel = os.pipe()
        with _lock:
            _running[self._p_key] = self
            _children.add(self)
        try:
            with carried_by(self):
                future = executor.submit(_runner_for(target), spec, info, target, args, kwargs)
        except BaseException:
            with _lock:
                _running.pop(self._p_key, None)
                _children.discard(self)
            for fd in self._p_sentinel:
                os.close(fd)
            self._p_sentinel = None
            raise
        self._p_future = future
        future.add_done_callback(self._task_done)

    def _carried(self, value: Any) -> Any:
        """A Pipe end given as an argument, as the Process gets it (so the analysis sees the
        remote end's class, which needs no parsl_poncho on the worker)."""
        if isinstance(value, Connection):
            return value.remote_end(self)
        if type(value) in (list, tuple):
            return type(value)(self._carried(v) for v in value)
        return value

    def _connected(self, conn: Any) -> None:
        """The hub's thread: the task runs; read what it reports until it ends."""
        with self._p_lock:
            if self._p_exitcode is not None or self._p_conn is not None:
                conn.send("stop")  # terminated before it ran, or Work Queue's rerun
                conn.close()
                return
            self._p_conn = conn
            conn.send("run")
        code = -signal.SIGKILL  # the connection ends without an exit code: the worker is gone
        try:
            while True:
                message = conn.recv()
                if message[0] == "out":
                    _write(message[1], message[2])
                elif message[0] == "started":
                    self._p_pid = int(message[1])
                elif message[0] == "exit":
                    code = int(message[1])
                    break
        except (EOFError, OSError):
            logger.warning("process %s: its task's connection ended without an exit code "
                           "(its worker is gone)", self._name)
        conn.close()
        self._finish(code)

    def _task_done(self, future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            with self._p_lock:
                never_ran = self._p_conn is None and self._p_exitcode is None
            if never_ran:
                sys.stderr.write(f"Process {self._name} could not run: "
                                 f"{type(exc).__name__}: {exc}\n")
                self._finish(1)
        elif isinstance(future.result(), int):
            self._finish(future.result())

    def _finish(self, code: int) -> None:
        with self._p_lock:
            if self._p_exitcode is not None:
                return
            self._p_exitcode = code
        with _lock:
            _running.pop(self._p_key, None)
        try:
            process_ended(self._p_key)
        except Exception:  # noqa: BLE001 - the store is gone: nobody reads those pipes
            logger.warning("process %s: could not mark its store pipes closed", self._name,
                           exc_info=True)
        os.close(self._p_sentinel[1])
        self._p_done.set()

    # -- the standard library's API ----------------------------------------------------------------
    def join(self, timeout: float | None = None) -> None:
        """Wait until the process ends, or ``timeout`` seconds."""
        self._check_closed()
        if self._p_future is None:
            raise AssertionError("can only join a started process")
        if self._p_done.wait(timeout):
            with _lock:
                _children.discard(self)

    def is_alive(self) -> bool:
        """Whether it was started and has not ended."""
        self._check_closed()
        return self._p_future is not None and self._p_exitcode is None

    def terminate(self) -> None:
        """Send it SIGTERM (exit code ``-15`` unless it handles the signal)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send it SIGKILL (exit code ``-9``)."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        self._check_closed()
        with self._p_lock:
            if self._p_future is None or self._p_exitcode is not None:
                return
            conn = self._p_conn
        if conn is None:  # still queued: it will never run (the hub tells its task to stop)
            self._finish(-signum)
            return
        try:
            conn.send(("signal", signum))
        except OSError:
            pass  # it ended meanwhile

    def close(self) -> None:
        """Release the process object's resources.

        :raises ValueError: it still runs (join or terminate it first).
        """
        if self._p_closed:
            return
        if self._p_future is not None and self._p_exitcode is None:
            raise ValueError("Cannot close a process while it is still running. You should "
                             "first call join() or terminate().")
        if self._p_sentinel is not None:
            os.close(self._p_sentinel[0])
        with _lock:
            _children.discard(self)
        self._p_closed = True


def _hello(hello: tuple, conn: Any) -> None:
    """The hub's handler for ``("process", key)``."""
    with _lock:
        process = _running.get(hello[1])
    if process is None:
        conn.send("stop")
        conn.close()
        return
    process._connected(conn)


def _write(which: int, data: bytes) -> None:
    stream = sys.stdout if which == 1 else sys.stderr
    buffer = getattr(stream, "buffer", None)
    try:
        if buffer is not None:
            stream.flush()
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(data.decode(errors="replace"))
            stream.flush()
    except (OSError, ValueError):
        pass  # the driver's stream is closed


def _runner_for(target: Callable | None) -> Callable:
    """``_remote.run_process`` named after the target (Work Queue category, logs, sizing)."""
    name = getattr(target, "__name__", None) or type(target).__name__
    runner = types.FunctionType(_remote.run_process.__code__, _remote.run_process.__globals__,
                                name, None, None)
    runner.__qualname__ = f"Process[{getattr(target, '__qualname__', name)}]"
    runner.__module__ = _remote.run_process.__module__
    return runner


def _register_exit() -> None:
    """At exit: terminate daemon processes, join the others (as the standard library); after
    the executor's own exit handler is registered, so this runs before it stops."""
    global _atexit_registered
    with _lock:
        if not _atexit_registered:
            atexit.register(_exit_function)
            _atexit_registered = True


def _exit_function() -> None:
    for process in active_children():
        if process.daemon:
            process.terminate()
    for process in active_children():
        process.join()
