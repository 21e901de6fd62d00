"""Prompt dispatch around Work Queue's ``wait``: the manager loop never sleeps inside it.

Work Queue (cctools 9.9, as Debian ships it, and still its master) turns ``wait(0)`` into
``wait(1)`` and loops until the next whole second. After a round with no event it sets a
*busy-waiting* flag, and the next round, in this call or the next one, polls the worker links for
up to 1000 ms. A task submitted meanwhile is dispatched only after that poll: bare
``work_queue`` with ``sleep 4`` running, two ``wait(0)`` calls, then ``submit(true)``: the next
``wait(0)`` takes 1.002 s. Pool round trips and GridSearchCV batches paid it.

No tune parameter or other wait call changes that. But the loop also asks, after a round with no
event and before setting the flag, whether the "process module" has a finished child process,
and returns at once if so (``work_queue_enable_process_module``, which makeflow uses to hear of
its local jobs). :func:`enable_prompt_wait` turns that check on and puts one permanent entry in
the finished-children list, so every ``wait(0)`` returns after its first round with no event:
it still dispatches, retrieves and accepts as before, but never sleeps. The manager loop then
sleeps itself, in :meth:`Sleeper.sleep`, on the executor's queue *and* Work Queue's sockets, so
a new task or a worker's message wakes it at once. A worker's line that Work Queue already read
into its own buffer wakes no socket: the loop calls ``wait(0)`` until it returns None twice
(each round handles one buffered line) and, while tasks are in Work Queue, sleeps at most 5 ms.

The price, measured with one local worker and 300 ``true`` tasks: 4 to 5 ``wait`` calls per
task instead of 1, about 0.4 ms more manager CPU per task than Work Queue's own sleeping wait.

Both symbols are exported by the cctools library the Python module loads; when they are not,
the manager keeps the old behaviour (and the old latency).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import stat
import time
from typing import Any

logger = logging.getLogger(__name__)

#: sizeof(struct process_info) in cctools' dttools/process.h: pid, status, struct rusage.
_PROCESS_INFO_SIZE = 4 + 4 + 144
#: Seconds between rescans of this process's sockets (workers connecting or leaving).
_RESCAN = 1.0


def enable_prompt_wait(q: Any) -> bool:
    """Make ``q.wait(0)`` return after its first round without an event; True if done.

    ``q`` is a ``WorkQueue`` of the legacy ``work_queue`` module or ``ndcctools.work_queue``.
    The entry put in cctools' list of finished children is never freed: it must outlive the
    queue, and it is 152 bytes once per manager process.
    """
    try:
        module = type(q).__module__
        lib = ctypes.CDLL(_library_of(module))
        enable, putback = lib.work_queue_enable_process_module, lib.process_putback
        pointer = int(q._work_queue)
    except (AttributeError, OSError, TypeError, ValueError):
        logger.info("Work Queue's process module is not reachable: wait(0) may sleep up to 1 s")
        return False
    libc = ctypes.CDLL(None)
    libc.calloc.restype = ctypes.c_void_p
    entry = libc.calloc(1, _PROCESS_INFO_SIZE)  # calloc: cctools would free() it if popped
    enable.argtypes, putback.argtypes = [ctypes.c_void_p], [ctypes.c_void_p]
    putback(entry)
    enable(pointer)
    return True


def _library_of(module_name: str) -> str:
    """The file of the SWIG extension behind a ``work_queue`` Python module."""
    import importlib

    module = importlib.import_module(module_name)
    native = getattr(module, "_work_queue", None) or importlib.import_module(
        module_name.rpartition(".")[0] + "._work_queue" if "." in module_name else "_work_queue")
    return native.__file__


class Sleeper:
    """Sleeps until the executor's queue or any of Work Queue's sockets has something to read.

    Work Queue's sockets are this process's sockets (the manager process opens no others): the
    listening one and one per worker, rescanned every second. A worker's message that Work
    Queue already read into its own buffer is not seen here, so a sleep never exceeds the
    timeout it is given.
    """

    def __init__(self, inbox_fd: int | None) -> None:
        self.inbox_fd = inbox_fd
        self._scanned = 0.0
        self._poll = select.poll()
        self._fds: set[int] = set()

    def sleep(self, timeout: float) -> None:
        """Return when there is something to read, or after ``timeout`` seconds."""
        now = time.monotonic()
        if now - self._scanned > _RESCAN:
            self._scanned = now
            self._watch(set(_sockets()) | ({self.inbox_fd} if self.inbox_fd is not None else set()))
        if any(events & select.POLLNVAL for _fd, events in self._poll.poll(timeout * 1000)):
            self._scanned = 0.0  # a socket Work Queue closed: rescan before the next sleep

    def _watch(self, fds: set[int]) -> None:
        for fd in self._fds - fds:
            self._poll.unregister(fd)
        for fd in fds - self._fds:
            self._poll.register(fd, select.POLLIN)
        self._fds = fds


def _sockets() -> list[int]:
    """This process's open sockets (Linux /proc, else /dev/fd)."""
    where = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    found = []
    for name in os.listdir(where):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                found.append(int(name))
        except (OSError, ValueError):
            continue  # the directory's own descriptor, closed since the listing
    return found
