"""Work Queue binding and the manager loop that runs it in a process of its own.

Work Queue's ``wait`` blocks inside C code holding the GIL, so, like Parsl's own
WorkQueueExecutor, the manager runs in a separate (spawned) process. The executor and that
process talk through two queues whose messages are named by direction:

* :class:`TaskToWq` -- executor to manager: one fully prepared Work Queue task;
* :class:`CategoryToWq` -- executor to manager: the requests of a category's tasks that do not
  state their own (right-sizing, see ``parsl_poncho/sizing.py``);
* :class:`WqToTask` -- manager to executor: how that task ended, and what Work Queue gave it.

Result codes are translated into words by one pure function, :func:`explain_result`, so the
executor never needs the Work Queue module to understand a failure.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Mapping

from parsl_poncho.backlog import Backlog, holds_no_core
from parsl_poncho.errors import ExecutorError
from parsl_poncho.stall import StallWatch
from parsl_poncho.wq_wait import Sleeper, enable_prompt_wait

logger = logging.getLogger(__name__)

#: Where Debian's python3-workqueue installs the legacy top-level ``work_queue`` module.
LEGACY_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

#: Resource names Parsl's resource specification and Work Queue share.
RESOURCE_NAMES = ("cores", "memory", "disk", "gpus", "priority", "running_time_min")
#: What Work Queue allocates a task and a worker offers (memory and disk in MB).
BOX = ("cores", "memory", "disk")

#: Exit statuses of worker_shim/poncho_run, poncho_fetch and run_function.py (see their headers).
SHIM_EXIT_MEANINGS: Mapping[int, str] = {
    64: "poncho_run usage error (a bug in parsl-poncho's task command)",
    65: "the environment tarball is corrupt or does not match its sha256 (re-transfer failed?)",
    66: "the environment tarball holds unsafe members (absolute paths, '..', escaping links)",
    67: "unpacking the environment failed on the worker (disk full? see the output)",
    68: "timed out waiting for another task to unpack the environment (raise unpack_timeout)",
    69: "poncho_fetch: the node has neither curl nor wget to fetch the environment (install one)",
    74: "poncho_fetch: the environment could not be fetched or copied (see the output: the URL "
        "or path, and what to check)",
    76: "poncho_fetch: the published environment does not match its sha256 (truncated or "
        "corrupt on the shared directory or behind the URL; publish it again)",
    20: "run_function.py could not load the function or write the result (see the output)",
    126: "the task command is not executable on the worker",
    127: "a command the task needs was not found on the worker",
}


def load_work_queue() -> ModuleType:
    """Import Work Queue: ``ndcctools.work_queue``, else the legacy top-level ``work_queue``.

    The legacy module is looked for on ``sys.path`` first and only then in
    :data:`LEGACY_DIST_PACKAGES` (appended, never prepended, so the running environment's own
    packages keep precedence).

    :raises ExecutorError: neither module can be imported.
    """
    try:
        from ndcctools import work_queue as wq  # type: ignore[import-not-found]

        return wq
    except ImportError:
        pass
    try:
        import work_queue as wq  # type: ignore[import-not-found,no-redef]

        return wq
    except ImportError as exc:
        first = exc
    if LEGACY_DIST_PACKAGES not in sys.path:
        sys.path.append(LEGACY_DIST_PACKAGES)
    try:
        import work_queue as wq  # type: ignore[import-not-found,no-redef]

        return wq
    except ImportError as exc:
        raise ExecutorError(
            "Work Queue's Python module cannot be imported (tried ndcctools.work_queue and "
            f"work_queue, also from {LEGACY_DIST_PACKAGES}): {exc}. Install cctools "
            "('conda install -c conda-forge ndcctools', or Debian's python3-workqueue)."
        ) from first


@dataclass(frozen=True)
class FileToWq:
    """One file of a task: ``local`` path on the manager, ``remote`` name in the sandbox."""

    local: str
    remote: str
    cache: bool = False


@dataclass(frozen=True)
class TaskToWq:
    """Executor -> manager: a task ready to submit (its env is built and verified)."""

    id: str
    command: str
    category: str
    inputs: tuple[FileToWq, ...]
    outputs: tuple[FileToWq, ...]
    result_file: str
    resources: Mapping[str, Any] = field(default_factory=dict)
    max_retries: int | None = 1
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CategoryToWq:
    """Executor -> manager: ``max_resources`` (e.g. ``{"memory": 400}``, MB) become what each
    task of ``category`` is given for a resource it does not request itself (Work Queue's
    ``specify_category_max_resources``; the category stays in FIXED mode)."""

    category: str
    max_resources: Mapping[str, float]

    @property
    def id(self) -> str:
        """The key under which the executor keeps it, to send it again to a new manager."""
        return f"category:{self.category}"


@dataclass(frozen=True)
class WqToTask:
    """Manager -> executor: a task ended; ``result`` is the Work Queue result's name.

    ``allocated`` is what Work Queue gave the last attempt (``cores``, ``memory`` MB, ``disk``
    MB; empty if unknown), ``worker_memory`` the memory (MB) of the largest connected worker
    (0 if unknown).
    """

    id: str
    result: str
    return_status: int
    output: str = ""
    host: str = ""
    result_file: str | None = None
    wq_id: int = -1
    allocated: Mapping[str, float] = field(default_factory=dict)
    worker_memory: int = 0

    def read_result(self) -> dict[str, Any]:
        """The runner's result dict from ``result_file`` ({} when the task wrote none)."""
        if self.result_file is None:
            return {}
        import cloudpickle

        with open(self.result_file, "rb") as f:
            return cloudpickle.load(f)


@dataclass(frozen=True)
class ManagerSettings:
    """Everything the manager process needs to open its queue (picklable)."""

    port: int = 0
    project_name: str | None = None
    project_password_file: str | None = None
    log_dir: str | None = None
    autolabel: bool = False
    autolabel_window: int | None = None
    max_idle: float = 0.1
    #: Seconds tasks may wait while connected workers run none before the manager says why.
    stall_warning: float = 60.0


#: Shortest pause of the manager loop when nothing happens (it doubles up to max_idle).
_MIN_IDLE = 0.002
#: Longest sleep of the prompt loop while tasks are in Work Queue: a worker's line Work Queue
#: read ahead into its buffer wakes no socket, and waits at most this long (parsl_poncho/wq_wait).
_IN_FLIGHT_NAP = 0.005
#: How many times in a row wait(0) returns None before the prompt loop sleeps (each call
#: handles one more line a worker sent that Work Queue holds in its buffer).
_DRAINS = 2

_RESULT_WORDS: Mapping[str, str] = {
    "SUCCESS": "the task finished",
    "INPUT_MISSING": "an input file could not be sent to the worker",
    "OUTPUT_MISSING": "the result file did not come back from the worker",
    "STDOUT_MISSING": "the task's output was truncated",
    "SIGNAL": "the task was killed by a signal",
    "RESOURCE_EXHAUSTION": "the task used more resources than it requested "
    "(raise cores/memory/disk in its parsl_resource_specification)",
    "TASK_TIMEOUT": "the task ran past its end time",
    "UNKNOWN": "Work Queue could not classify the failure",
    "FORSAKEN": "the worker gave up on the task (not an error of the task itself)",
    "MAX_RETRIES": "the task was retried max_retries times (workers lost or failing) and gave up",
    "TASK_MAX_RUN_TIME": "the task ran longer than its maximum running time",
    "DISK_ALLOC_FULL": "the task's sandbox ran out of disk (raise disk in its resource spec)",
    "RMONITOR_ERROR": "the resource monitor failed",
}


def worker_command(executable: str, options: str, port: int | None, *,
                   address: str | None = None, project_name: str | None = None,
                   password_file: str | None = None) -> str:
    """The shell command that starts one worker of the manager on ``port`` (or, with
    ``project_name``, of the manager of that name in the catalog)."""
    parts = [executable]
    if password_file:
        parts += ["--password", password_file]
    if options:
        parts.append(options)
    if project_name:
        parts += ["-M", project_name]
    else:
        parts += [address or socket.gethostname(), str(port)]
    return " ".join(parts)


def explain_result(result: str, return_status: int, output: str = "") -> str:
    """Say in words why a task produced no result; pure, so testable without Work Queue.

    >>> explain_result("SIGNAL", 9)
    'Work Queue result SIGNAL: the task was killed by a signal'
    """
    words = _RESULT_WORDS.get(result, "unrecognised Work Queue result")
    message = f"Work Queue result {result}: {words}"
    if result in ("SUCCESS", "OUTPUT_MISSING") and return_status:
        meaning = SHIM_EXIT_MEANINGS.get(return_status)
        message += f"; exit status {return_status}"
        if meaning:
            message += f" ({meaning})"
    tail = output.strip()
    if tail:
        message += "\n--- task output (last lines) ---\n" + "\n".join(tail.splitlines()[-30:])
    return message


def result_names(wq: ModuleType) -> dict[int, str]:
    """Map each WORK_QUEUE_RESULT_* value of a binding to its short name ("SUCCESS", ...)."""
    prefix = "WORK_QUEUE_RESULT_"
    return {getattr(wq, n): n[len(prefix):] for n in dir(wq) if n.startswith(prefix)}


# -- the manager process --------------------------------------------------------------------


def _open_queue(wq: ModuleType, settings: ManagerSettings) -> Any:
    """Create the WorkQueue object and apply the settings."""
    debug_log = os.path.join(settings.log_dir, "debug_log") if settings.log_dir else None
    q = wq.WorkQueue(settings.port, debug_log=debug_log)
    if settings.project_name:
        q.specify_name(settings.project_name)
    if settings.project_password_file:
        q.specify_password_file(settings.project_password_file)
    if settings.autolabel:
        q.enable_monitoring()
        if settings.autolabel_window is not None:
            q.tune("category-steady-n-tasks", settings.autolabel_window)
    if settings.log_dir:
        q.specify_log(os.path.join(settings.log_dir, "manager_log"))
        q.specify_transactions_log(os.path.join(settings.log_dir, "transaction_log"))
    return q


def _make_task(wq: ModuleType, msg: TaskToWq) -> Any:
    """Turn a TaskToWq into a Work Queue Task."""
    t = wq.Task(msg.command)
    t.specify_tag(msg.id)
    t.specify_category(msg.category)
    for name in RESOURCE_NAMES:
        value = msg.resources.get(name)
        if value is not None:
            getattr(t, f"specify_{name}")(value)
    if msg.max_retries is not None:
        t.specify_max_retries(msg.max_retries)
    for key, value in msg.env.items():
        t.specify_environment_variable(key, value)
    for f in msg.inputs:
        t.specify_input_file(f.local, f.remote, cache=f.cache)
    for f in msg.outputs:
        t.specify_output_file(f.local, f.remote, cache=f.cache)
    return t


def apply_category(q: Any, msg: CategoryToWq) -> bool:
    """Set a category's requests in Work Queue; False (logged) if it refuses them."""
    try:
        q.specify_category_max_resources(msg.category, dict(msg.max_resources))
    except Exception:  # noqa: BLE001 - a category request is an optimisation, never fatal
        logger.exception("Work Queue refused requests %s for category %r",
                         dict(msg.max_resources), msg.category)
        return False
    logger.info("category %r: tasks without their own request get %s", msg.category,
                dict(msg.max_resources))
    return True


def _submit_pending(q: Any, task_queue: Any, backlog: Backlog, block: float) -> bool:
    """Take every message waiting in ``task_queue`` (a TaskToWq, a CategoryToWq, or a list of
    them: the executor sends batches): categories apply at once, tasks join ``backlog``; True
    if there was any."""
    got = False
    while True:
        try:
            batch = task_queue.get(timeout=block) if block else task_queue.get_nowait()
        except queue.Empty:
            return got
        block, got = 0, True
        for msg in batch if isinstance(batch, list) else (batch,):
            if isinstance(msg, CategoryToWq):
                apply_category(q, msg)
            else:
                backlog.add(msg)


def _submit_one(wq: ModuleType, q: Any, msg: TaskToWq, pending: dict, out: list) -> None:
    """Give a task to Work Queue; one it refuses gets its WqToTask in ``out``."""
    try:
        q.submit(_make_task(wq, msg))
    except Exception as exc:  # noqa: BLE001 - reported to the task, not fatal to the loop
        logger.exception("Work Queue refused task %s", msg.id)
        out.append(WqToTask(id=msg.id, result="UNKNOWN", return_status=-1,
                            output=f"Work Queue refused the task: {exc!r}"))
        return
    pending[msg.id] = msg


def allocation_of(t: Any) -> dict[str, float]:
    """What Work Queue gave a finished task (cores, memory, disk), {} if the binding hides it."""
    try:
        box = t.resources_allocated
        box = box() if callable(box) else box
        got = {name: float(getattr(box, name)) for name in BOX}
    except Exception:  # noqa: BLE001 - bindings differ; the allocation is informative only
        return {}
    return {name: value for name, value in got.items() if value >= 0}


class _LargestWorker:
    """The memory of the largest connected worker, asked of Work Queue at most every 2 s."""

    def __init__(self, q: Any) -> None:
        self.q, self.when, self.memory = q, 0.0, 0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self.when > 2:
            self.when = now
            try:  # stats, not workers_summary(), which rounds sizes (4000 MB -> 3840)
                self.memory = max(0, int(self.q.stats.max_memory))
            except Exception:  # noqa: BLE001 - informative only
                self.memory = 0
        return self.memory


def _report(t: Any, names: Mapping[int, str], pending: dict, out: list,
            largest: Any = lambda: 0) -> None:
    """Add to ``out`` the WqToTask of a finished Work Queue task."""
    msg = pending.pop(t.tag, None)
    if msg is None:
        logger.warning("Work Queue returned unknown task tag %r", t.tag)
        return
    have_result = os.path.exists(msg.result_file)
    out.append(WqToTask(
        id=msg.id,
        result=names.get(t.result, str(t.result)),
        return_status=int(t.return_status),
        output=(t.output or "")[-20000:],
        host=str(getattr(t, "hostname", "") or ""),
        result_file=msg.result_file if have_result else None,
        wq_id=int(t.id),
        allocated=allocation_of(t),
        worker_memory=largest(),
    ))


def run_manager(*, settings: ManagerSettings, task_queue: Any, result_queue: Any,
                port_mailbox: Any, should_stop: Any) -> None:
    """Body of the manager process: submit TaskToWq messages, report WqToTask until stopped.

    Messages come one by one or as lists; results go out as lists (one per round). The chosen
    port (or None on failure) is put into ``port_mailbox`` first. When ``should_stop`` is set,
    or the parent dies, connected workers are told to exit and the queue is closed, which
    releases the port.
    """
    try:
        wq = load_work_queue()
        q = _open_queue(wq, settings)
    except Exception:
        port_mailbox.put(None)
        raise
    port_mailbox.put(q.port)
    names = result_names(wq)
    largest = _LargestWorker(q)
    stall = StallWatch(q, settings.stall_warning)
    # wait(0) never sleeps: the loop sleeps on the executor's queue and the workers' sockets.
    sleeper = Sleeper(_inbox_fd(task_queue)) if enable_prompt_wait(q) else None
    pending: dict[str, TaskToWq] = {}  # in Work Queue
    backlog = Backlog()
    parent = os.getppid()
    idle = _MIN_IDLE
    try:
        while not should_stop.is_set() and os.getppid() == parent:
            done: list[WqToTask] = []
            # Without a sleeper, block on the executor's queue only while nothing happens (a
            # new task wakes us at once); Work Queue's own wait may then sleep up to 1 s.
            busy = _submit_pending(q, task_queue, backlog, 0 if sleeper else idle)
            in_flight = sum(not holds_no_core(m) for m in pending.values())
            for msg in backlog.take(in_flight, q):
                _submit_one(wq, q, msg, pending, done)
            # Until None; with a sleeper, until None twice: a worker's line that Work Queue
            # read ahead into its buffer is handled by the second (no socket would wake us).
            for _ in range(_DRAINS if sleeper else 1):
                t = q.wait(0)  # also accepts connecting workers when no task is queued
                while t is not None:
                    _report(t, names, pending, done, largest)
                    t = q.wait(0)
            if done:
                result_queue.put(done)
            busy = busy or bool(done)
            idle = _MIN_IDLE if busy else min(idle * 2, settings.max_idle)
            if sleeper is not None and not busy:
                sleeper.sleep(_IN_FLIGHT_NAP if pending else settings.max_idle)
            stall(pending)
    finally:
        t = None
        _close_queue(q)
        del q  # frees the C queue now (closing the port), not at interpreter exit


def _inbox_fd(task_queue: Any) -> int | None:
    """The descriptor that becomes readable when the executor sends (a multiprocessing
    Queue's reading end), or None if it has none (the sleeps then just time out)."""
    reader = getattr(task_queue, "_reader", None)
    try:
        return reader.fileno() if reader is not None else None
    except (OSError, ValueError):
        return None


def _close_queue(q: Any) -> None:
    """Tell workers to exit and drop the queue so its port closes."""
    try:
        q.shutdown_workers(0)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and q.stats.workers_connected > 0:
            q.wait(0)
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - best effort on the way out
        logger.debug("shutting down workers failed", exc_info=True)


def count_transfers(debug_log: str) -> dict[tuple[str, str], int]:
    """Count file transfers per (worker, cached file name) in a manager's debug log.

    Work Queue logs ``tx to HOST (ADDR): put CACHENAME SIZE MODE`` each time it actually sends
    a file's bytes; a cached file already on a worker is not sent again. Used by the tests and
    handy when checking that each environment tarball reaches each worker once.
    """
    pattern = re.compile(r"tx to (.+?): put (\S+) (\d+)")
    counts: dict[tuple[str, str], int] = {}
    with open(debug_log, errors="replace") as f:
        for line in f:
            m = pattern.search(line)
            if m:
                key = (m.group(1), m.group(2))
                counts[key] = counts.get(key, 0) + 1
    return counts
