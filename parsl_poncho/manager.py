"""The Work Queue manager process as the executor sees it: spawned, fed, restarted, stopped.

The manager loop itself (:func:`parsl_poncho.workqueue.run_manager`) runs in a spawned process,
so a crash of Work Queue's C library cannot take the submit process with it. This module keeps
everything the executor needs around that process: the queues to it and back, the messages
sent and not finished (so a restarted manager gets them again), and the restart policy.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Iterator

from parsl.multiprocessing import SpawnContext, SpawnProcess

from parsl_poncho.errors import ExecutorError
from parsl_poncho.workqueue import CategoryToWq, ManagerSettings, TaskToWq, WqToTask, run_manager

logger = logging.getLogger(__name__)

#: Seconds to wait for a new manager process to say which port it listens on.
START_TIMEOUT = 60


class ManagerProcess:
    """One Work Queue manager process at a time, restarted on the same port when it dies.

    :param settings: how the manager opens its queue (``settings.port`` 0: any free port).
    :param name: the executor's label, for process names and messages.
    :param log_dir: where the manager writes its logs (named in errors).
    :param max_restarts: times a dead manager is replaced before :meth:`results` gives up.
    """

    def __init__(self, settings: ManagerSettings, name: str, log_dir: Any,
                 max_restarts: int) -> None:
        self.settings = settings
        self.name = name
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.restarts = 0
        self.port: int | None = None
        self.process: SpawnProcess | None = None
        #: messages handed to the manager and not finished, by id (resent after a restart)
        self.sent: dict[str, TaskToWq | CategoryToWq] = {}
        self._lock = threading.Lock()  # the queues, and what was sent through them
        self._should_stop = SpawnContext.Event()
        # Messages go out in batches: one pickle and one write for all that a flush finds.
        self._outbox: list[TaskToWq | CategoryToWq] = []
        self._outbox_ready = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self) -> int:
        """Spawn the manager on ``settings.port`` (or the port it chose before) and return
        the port it listens on.

        :raises ExecutorError: it did not report a port within a minute.
        """
        port = self.port if self.port is not None else self.settings.port
        self._tasks = SpawnContext.Queue()
        self._results = SpawnContext.Queue()
        mailbox = SpawnContext.Queue()
        settings = dataclasses.replace(self.settings, port=port)
        self.process = SpawnProcess(
            target=run_manager, name=f"{self.name}-wq-manager",
            kwargs={"settings": settings, "task_queue": self._tasks,
                    "result_queue": self._results, "port_mailbox": mailbox,
                    "should_stop": self._should_stop},
        )
        self.process.start()
        chosen = _wait_for_port(mailbox, self.process)
        mailbox.close()
        if chosen is None:
            self.process.join(timeout=5)
            raise ExecutorError(start_failure_message(self.name, port, self.process.exitcode,
                                                      self.log_dir))
        self.port = int(chosen)
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush, name=f"{self.name}-wq-send",
                                             daemon=True)
            self._flusher.start()
        return self.port

    def send(self, msg: TaskToWq | CategoryToWq) -> None:
        """Hand a message to the manager, remembering it (resent on a restart) until done."""
        with self._lock:
            self.sent[msg.id] = msg
            self._outbox.append(msg)
        self._outbox_ready.set()

    def _flush(self) -> None:
        """Sender thread: hand whatever accumulated to the manager as one list."""
        while not self._should_stop.is_set():
            self._outbox_ready.wait(timeout=1)
            self._outbox_ready.clear()
            with self._lock:
                batch, self._outbox = self._outbox, []
                if batch:
                    self._tasks.put(batch)

    def forget(self, task_id: str) -> None:
        """The task is finished, or will be sent again another way: never resend it."""
        with self._lock:
            self.sent.pop(task_id, None)

    def results(self) -> Iterator[WqToTask]:
        """Finished tasks, until :meth:`stop` and the queue is drained; a dead manager is
        restarted (up to ``max_restarts`` times) on the way.

        :raises ExecutorError: the manager died and cannot be restarted; every task is lost.
        """
        while not self._should_stop.is_set() or not self._results.empty():
            try:
                yield from self._results.get(timeout=0.5)  # a list per manager round
            except queue.Empty:
                if not self.process.is_alive() and not self._should_stop.is_set():
                    try:
                        self._restart()
                    except ExecutorError:
                        raise
                    except Exception as exc:  # every task is lost: say so, never hang them
                        raise ExecutorError(
                            f"{self.name}: the Work Queue manager process died and could not "
                            f"be restarted: {exc!r}") from exc
            except (EOFError, OSError):
                return

    def _restart(self) -> None:
        """Replace a dead manager process: same port, so workers reconnect; resend its tasks.

        Every task sent and not finished is sent to the new manager: one that was running runs
        again, as when Work Queue retries a task after losing its worker. (Results still in the
        dead manager's queue are not read: a message it was killed while writing could block
        the reader for ever; those few tasks run again instead.)

        :raises ExecutorError: no restarts are left, or the new manager did not start.
        """
        exitcode = self.process.exitcode
        if self.restarts >= self.max_restarts:
            raise ExecutorError(
                f"{self.name}: the Work Queue manager process died (exit code {exitcode}) "
                f"after {self.restarts} restarts (manager_restarts={self.max_restarts}); "
                f"see {self.log_dir}")
        with self._lock:
            for q in (self._tasks, self._results):
                q.cancel_join_thread()  # nobody reads the dead manager's queues any more
                q.close()
            self.restarts += 1
            logger.warning("%s: the Work Queue manager process died (exit code %s); "
                           "restarting it on port %s (restart %d of %d) and resending %d tasks",
                           self.name, exitcode, self.port, self.restarts, self.max_restarts,
                           len(self.sent))
            self.start()
            self._outbox = []  # all of it is in sent
            if self.sent:
                self._tasks.put(list(self.sent.values()))

    def stop(self) -> None:
        """Tell the manager to stop (it tells workers to exit and closes its port) and wait;
        :meth:`results` ends once the queue is drained."""
        self._should_stop.set()
        self._outbox_ready.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        if self.process is None:
            return
        self.process.join(timeout=30)
        if self.process.is_alive():
            logger.warning("%s: manager process did not stop; terminating it", self.name)
            self.process.terminate()
            self.process.join(timeout=10)

    def close(self) -> None:
        """Release the queues, after :meth:`stop` and after the last :meth:`results` read."""
        for q in (self._tasks, self._results):
            q.close()
            q.join_thread()


def _wait_for_port(mailbox: Any, process: Any) -> int | None:
    """The port the new manager reports; None as soon as it dies without one, or on timeout."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return mailbox.get(timeout=0.5)
        except queue.Empty:
            if not process.is_alive():
                try:  # it may have reported just before dying
                    return mailbox.get(timeout=0.5)
                except queue.Empty:
                    return None
    return None


def start_failure_message(name: str, port: int, exitcode: int | None, log_dir: Any,
                          main_file: str | None = None) -> str:
    """Why a manager process reported no port, the likeliest cause first.

    A spawned process imports the parent's main script again; without an
    ``if __name__ == "__main__":`` guard, that runs the workflow a second time (a second
    ``parsl.load``) instead of the manager, and dies. That is by far the commonest cause.
    """
    script = main_file if main_file is not None else _main_script()
    if exitcode is not None and script is not None and not has_main_guard(script):
        return (f"{name}: the Work Queue manager process exited at once (exit code {exitcode}): "
                f"your script {script} has no `if __name__ == \"__main__\":` guard, so the "
                "manager process, which Python starts by importing that script again, ran "
                "your workflow (a second parsl.load) instead of starting. Put the script's "
                "work (parsl.load and the app calls) under `if __name__ == \"__main__\":`.")
    died = f"the process exited with code {exitcode}; " if exitcode is not None else ""
    return (f"{name}: the Work Queue manager did not start ({died}port {port} in use? "
            f"see {log_dir} and the Parsl log)")


def _main_script() -> str | None:
    """The file the main module runs from, if it is a script (not -c, -m of a package or a REPL)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path if path and str(path).endswith(".py") and os.path.isfile(path) else None


def has_main_guard(path: str) -> bool:
    """Whether a script has a top-level ``if __name__ == "__main__":`` (True if unreadable)."""
    try:
        tree = ast.parse(open(path, "rb").read())
    except (OSError, SyntaxError, ValueError):
        return True  # unknown: do not blame the script
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if ({getattr(n, "id", None) for n in names} & {"__name__"}
                    and {getattr(n, "value", None) for n in names} & {"__main__"}):
                return True
    return False
