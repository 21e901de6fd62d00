"""Function monitor: what a task asks for beyond its spec and what it used, per task and per app.

The worker's runner measures each call from the OS (``worker_shim/run_function.py``: wall time,
CPU time of the process and its children, peak RSS) and returns the figures with the result, in
every exec mode. This module turns them into a :class:`TaskResources` on the executor future
(read it from an AppFuture with :func:`resources_of`), logs them, and keeps a per-app table
that the executor logs at shutdown. It also works out the parts of a task's request the user
did not spell out: thread-pool variables that follow the task's cores (:func:`thread_env`) and
the sandbox disk that holds its env (:func:`disk_for`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: Thread-pool sizes read by OpenMP, OpenBLAS, MKL, numexpr and Apple's Accelerate.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class TaskResources:
    """What one task used, measured on its worker (names and units as in Work Queue).

    :ivar wall_time: seconds the function call took.
    :ivar cpu_time: CPU seconds (user + system) of the call, children included.
    :ivar memory: peak resident memory in MB, the interpreter's baseline included.
    :ivar cores: cores the task was given.
    """

    wall_time: float
    cpu_time: float
    memory: float
    cores: int = 1

    @property
    def cpu_efficiency(self) -> float:
        """CPU time over the time of the cores given: ``cpu_time / (wall_time * cores)``."""
        return self.cpu_time / (self.wall_time * self.cores) if self.wall_time > 0 else 0.0

    @classmethod
    def from_report(cls, report: Mapping[str, Any], cores: int = 1) -> TaskResources | None:
        """The figures a runner put in its result dict, or None if it sent none (or bad ones)."""
        used = report.get("resources")
        if not isinstance(used, Mapping):
            return None
        try:
            return cls(wall_time=float(used["wall_time"]), cpu_time=float(used["cpu_time"]),
                       memory=float(used["memory"]), cores=int(cores))
        except (KeyError, TypeError, ValueError):
            logger.warning("ignoring malformed task resources %r", used)
            return None


def resources_of(future: Any) -> TaskResources | None:
    """What a finished task used, from a Parsl AppFuture or an executor future.

    None while the task runs, and for a task that produced no result (lost, killed, never
    sent). A task whose function raised has its figures too.

    >>> resources_of(app_future)  # doctest: +SKIP
    TaskResources(wall_time=1.02, cpu_time=0.98, memory=212.4, cores=1)
    """
    record = vars(future).get("task_record")  # AppFuture.__getattr__ would make a future
    if isinstance(record, Mapping):
        future = record.get("exec_fu")
    if future is None:
        return None
    return vars(future).get("parsl_poncho_resources")


def thread_env(env: Mapping[str, str], resources: Mapping[str, Any],
               host_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The task's environment: ``env`` plus each of :data:`THREAD_VARS` set to its cores.

    A variable the user set, in the executor's ``env`` or in this host's environment
    (``host_env``, default ``os.environ``), is left as the user has it.

    >>> thread_env({"OMP_NUM_THREADS": "4"}, {"cores": 2}, host_env={})["MKL_NUM_THREADS"]
    '2'
    """
    host = os.environ if host_env is None else host_env
    cores = str(max(1, int(resources.get("cores") or 1)))
    return {**{v: cores for v in THREAD_VARS if v not in host}, **env}


def disk_for(resources: Mapping[str, Any], env_size: int,
             default_disk: int | None) -> Mapping[str, Any]:
    """Give a task without ``disk`` its env tarball (``env_size`` bytes) plus ``default_disk``
    MB of sandbox; None leaves disk to Work Queue."""
    if "disk" in resources or default_disk is None:
        return resources
    return {**resources, "disk": -(-env_size // 2**20) + default_disk}


@dataclass
class AppUsage:
    """Running totals of one app's measured tasks."""

    tasks: int = 0
    wall_time: float = 0.0
    max_wall_time: float = 0.0
    max_memory: float = 0.0
    cpu_time: float = 0.0
    core_time: float = 0.0

    def add(self, used: TaskResources) -> None:
        self.tasks += 1
        self.wall_time += used.wall_time
        self.max_wall_time = max(self.max_wall_time, used.wall_time)
        self.max_memory = max(self.max_memory, used.memory)
        self.cpu_time += used.cpu_time
        self.core_time += used.wall_time * used.cores

    @property
    def mean_wall_time(self) -> float:
        return self.wall_time / self.tasks if self.tasks else 0.0

    @property
    def cpu_efficiency(self) -> float:
        """CPU time over core time, over all the app's tasks."""
        return self.cpu_time / self.core_time if self.core_time > 0 else 0.0


class Monitor:
    """Per-executor bookkeeping: tags futures at submit, records their figures at the end."""

    def __init__(self, label: str = "PonchoExecutor") -> None:
        self.label = label
        self._lock = threading.Lock()
        self._apps: dict[str, AppUsage] = {}

    def track(self, future: Any, app: str, resources: Mapping[str, Any]) -> None:
        """Remember on the executor ``future`` which app it runs and with how many cores."""
        future.parsl_poncho_app = app
        future.parsl_poncho_cores = int(resources.get("cores") or 1)

    def observe(self, future: Any, task_id: str, report: Mapping[str, Any]
                ) -> TaskResources | None:
        """Record a runner's result: on ``future`` (for :func:`resources_of`), in the log and
        in its app's totals."""
        app = getattr(future, "parsl_poncho_app", "?")
        used = TaskResources.from_report(report, getattr(future, "parsl_poncho_cores", 1))
        if used is None:
            return None
        if future is not None:
            future.parsl_poncho_resources = used
        logger.info("task %s (%s) used %.3f s wall, %.3f s CPU, %.1f MB peak on %d cores",
                    task_id, app, used.wall_time, used.cpu_time, used.memory, used.cores)
        with self._lock:
            self._apps.setdefault(app, AppUsage()).add(used)
        return used

    def usage(self) -> dict[str, AppUsage]:
        """A copy of the per-app totals so far."""
        with self._lock:
            return {app: AppUsage(**vars(u)) for app, u in self._apps.items()}

    def table(self) -> str:
        """The per-app table: tasks, mean and max wall time, max memory, CPU efficiency."""
        rows = [("app", "tasks", "mean wall s", "max wall s", "max memory MB", "CPU eff.")]
        for app, u in sorted(self.usage().items()):
            rows.append((app, str(u.tasks), f"{u.mean_wall_time:.3f}", f"{u.max_wall_time:.3f}",
                         f"{u.max_memory:.1f}", f"{u.cpu_efficiency:.0%}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths)))
                         for row in rows)

    def log_summary(self) -> None:
        """Log :meth:`table` (at shutdown), if any task was measured."""
        if self._apps:
            logger.info("%s: resources used per app:\n%s", self.label, self.table())
