"""Right-sizing: memory requests of each app's Work Queue category from what its tasks used.

A task whose resource specification leaves ``memory`` unset is *sized*: it runs limited to the
memory Work Queue allocates it (``PARSL_PONCHO_LIMIT_MEMORY=1``; the runner turns Work Queue's
``MEMORY`` into a data-segment limit, see ``worker_shim/run_function.py``). Before its category
has figures that is Work Queue's proportional share of the worker (e.g. half its memory for a
1-core task on a 2-core worker). After ``first_tasks`` measured tasks, the category's memory
request becomes the largest peak measured so far times ``margin`` (at least ``floor`` MB more),
capped at the largest worker, so a node runs as many of its tasks as fit; it is raised again
when a later task uses more. A sized task that runs out of its allocation (MemoryError under the
limit, or Work Queue's RESOURCE_EXHAUSTION when its own monitor is on) is sent again asking for
twice the memory, up to the largest connected worker; past that it fails with its MemoryError
and a note saying so.

Cores are not sized: the thread-pool variables follow a task's cores, so what a task measures
reflects the cores it was given, never the cores it could use.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from parsl_poncho.monitor import TaskResources
from parsl_poncho.workqueue import CategoryToWq, TaskToWq, WqToTask

logger = logging.getLogger(__name__)

#: Set in a sized task's environment: the runner limits its memory to Work Queue's MEMORY.
LIMIT_VAR = "PARSL_PONCHO_LIMIT_MEMORY"


def propose_memory(max_memory: float, *, margin: float = 1.25, floor: float = 64.0,
                   cap: float = 0) -> int:
    """The memory request (MB) for tasks that peaked at ``max_memory`` MB: ``margin`` times
    it, at least ``floor`` MB above it, at most ``cap`` (0: no cap).

    >>> propose_memory(300.0)
    375
    >>> propose_memory(100.0)
    164
    """
    wanted = math.ceil(max(max_memory * margin, max_memory + floor))
    return min(wanted, int(cap)) if cap > 0 else wanted


def ran_out_of_memory(msg: WqToTask, report: Mapping[str, Any]) -> bool:
    """Whether a task ended for want of memory: Work Queue's monitor killed it, the call raised
    MemoryError, or the runner hit MemoryError while loading the call."""
    if msg.result == "RESOURCE_EXHAUSTION":
        return True
    if report.get("exc_type") == "builtins.MemoryError":
        return True
    return msg.result_file is None and "MemoryError" in msg.output


@dataclasses.dataclass
class _Category:
    tasks: int = 0
    max_memory: float = 0.0
    requested: int = 0  # MB sent to Work Queue; 0 = none yet


class Sizer:
    """Per-executor right-sizing: marks sized tasks, sets category requests, retries tasks
    that ran out of memory. ``send`` hands a message to the manager (and keeps it, so a
    restarted manager gets it again).

    :param enabled: False makes every method a no-op (tasks run as without right-sizing).
    :param first_tasks: measured tasks of a category before its request is set.
    """

    def __init__(self, enabled: bool, send: Callable[[Any], None], *, first_tasks: int = 3,
                 margin: float = 1.25, floor: float = 64.0) -> None:
        self.enabled = enabled
        self.send = send
        self.first_tasks = first_tasks
        self.margin = margin
        self.floor = floor
        self.worker_memory = 0  # MB of the largest worker, as the manager last said
        self._lock = threading.Lock()
        self._categories: dict[str, _Category] = {}

    def limit(self, future: Any, task: Any, env: Mapping[str, str]) -> Mapping[str, str]:
        """The env of a task being sent (``task`` has ``category`` and ``resources``): with
        :data:`LIMIT_VAR` if it is sized. Marks ``future`` with its category."""
        if not self.enabled or task.resources.get("memory") is not None:
            return env
        future.parsl_poncho_sized = task.category
        return {**env, LIMIT_VAR: "1"}

    def observe(self, msg: WqToTask, future: Any, used: TaskResources | None) -> None:
        """A task ended with figures ``used``: keep them and what Work Queue allocated; update
        its category's request when it is due."""
        if future is not None:
            future.parsl_poncho_allocated = dict(msg.allocated)
        self.worker_memory = msg.worker_memory or self.worker_memory
        category = getattr(future, "parsl_poncho_sized", None)
        if used is not None and category is not None:
            self._record(category, used.memory)

    def requested(self, category: str) -> int:
        """MB of memory this sizer asked Work Queue to give ``category``'s tasks (0: none)."""
        with self._lock:
            return self._categories.get(category, _Category()).requested

    def _record(self, category: str, memory: float, *, count: bool = True) -> None:
        with self._lock:
            c = self._categories.setdefault(category, _Category())
            c.tasks += count
            c.max_memory = max(c.max_memory, memory)
            if c.tasks < self.first_tasks and not c.requested:
                return
            wanted = propose_memory(c.max_memory, margin=self.margin, floor=self.floor,
                                    cap=self.worker_memory)
            if c.requested and wanted <= c.requested * 1.1 and c.max_memory <= c.requested:
                return  # close enough: not a message per task
            c.requested = wanted
            tasks, peak = c.tasks, c.max_memory
        logger.info("category %r: memory request %d MB (largest peak %.1f MB in %d tasks)",
                    category, wanted, peak, tasks)
        self.send(CategoryToWq(category, {"memory": wanted}))

    def retry(self, msg: WqToTask, report: Mapping[str, Any],
              sent: Mapping[str, Any]) -> bool:
        """Send the task of ``msg`` (``sent[msg.id]``, a TaskToWq) again with twice its memory
        if it is sized and ran out of it; True if sent. At the largest worker's size it is not
        sent again: its error gets a note."""
        task = sent.get(msg.id)
        if not self.enabled or not isinstance(task, TaskToWq) or task.env.get(LIMIT_VAR) != "1":
            return False
        if not ran_out_of_memory(msg, report):
            return False
        had = float(msg.allocated.get("memory") or task.resources.get("memory") or 0)
        self.worker_memory = msg.worker_memory or self.worker_memory
        largest = self.worker_memory
        used = TaskResources.from_report(report)
        self._record(task.category, max(had, used.memory if used else 0), count=False)
        more = int(min(2 * had, largest)) if largest else int(2 * had)
        if had <= 0 or more <= had:
            self._explain(report, task, had, largest)
            return False
        logger.warning("task %s (%s) ran out of its %.0f MB: sending it again with %d MB",
                       task.id, task.category, had, more)
        Path(task.result_file).unlink(missing_ok=True)
        self.send(dataclasses.replace(task, resources={**task.resources, "memory": more}))
        return True

    @staticmethod
    def _explain(report: Mapping[str, Any], sent: TaskToWq, had: float, largest: int) -> None:
        """Say on the task's MemoryError why it was not retried."""
        exc = report.get("exception")
        if isinstance(exc, BaseException) and hasattr(exc, "add_note"):
            exc.add_note(f"parsl-poncho: task {sent.id} ({sent.category}) ran out of its "
                         f"{had:.0f} MB and no connected worker has more (largest: "
                         f"{largest or 'unknown'} MB). Give the app "
                         "parsl_resource_specification={'memory': MB}, or start workers "
                         "with more memory.")
