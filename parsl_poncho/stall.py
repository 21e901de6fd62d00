"""Why tasks wait while connected workers run none: Work Queue says nothing when no worker fits.

The manager loop calls a :class:`StallWatch` each round; it warns once per stall, naming what the
largest worker offers against the smallest request (:func:`stall_message`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

logger = logging.getLogger("parsl_poncho.workqueue")

#: What Work Queue allocates a task and a worker offers (memory and disk in MB).
BOX = ("cores", "memory", "disk")


class StallWatch:
    """Warns once per stall when tasks wait while connected workers run none of them.

    Work Queue itself says nothing when no worker fits a task: the workflow just hangs.
    """

    def __init__(self, q: Any, after: float) -> None:
        self.q, self.after = q, after
        self.checked, self.since, self.warned = 0.0, None, False

    def __call__(self, pending: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if now - self.checked < min(5.0, self.after / 2):
            return
        self.checked = now
        try:
            s = self.q.stats
            stalled = s.tasks_waiting > 0 and s.tasks_on_workers == 0 and s.workers_connected > 0
            workers = int(s.workers_connected)
            largest = {name: int(getattr(s, f"max_{name}")) for name in BOX}
        except Exception:  # noqa: BLE001 - a diagnosis, never fatal to the loop
            return
        if not stalled:
            self.since, self.warned = None, False
        elif self.since is None:
            self.since = now
        elif not self.warned and now - self.since >= self.after:
            self.warned = True
            logger.warning(stall_message(len(pending), workers, now - self.since, largest,
                                         [msg.resources for msg in pending.values()]))


def stall_message(tasks: int, workers: int, waited: float, largest: Mapping[str, int],
                  requests: Sequence[Mapping[str, Any]]) -> str:
    """Why ``tasks`` may have waited ``waited`` s with ``workers`` connected and none running:
    the largest worker's offer against the smallest request, naming what does not fit."""
    asked = {name: min((float(r[name]) for r in requests if r.get(name) is not None),
                       default=None) for name in BOX}
    text = (f"{tasks} task(s) have waited {waited:.0f} s while {workers} connected Work Queue "
            f"worker(s) run none. The largest worker offers {_box(largest)} (MB); the "
            f"smallest request is {_box(asked)}.")
    too_big = [name for name in BOX
               if asked[name] is not None and asked[name] > largest[name]]
    if too_big:
        text += (f" No worker has enough {' or '.join(too_big)}: start bigger workers "
                 "(worker_options) or ask for less in parsl_resource_specification.")
    if asked["disk"] is not None and asked["disk"] > largest["memory"]:
        text += (f" Work Queue (Debian's cctools 8.0.0 at least) gives no worker a task whose "
                 f"disk exceeds the worker's memory: give workers --memory of at least "
                 f"{asked['disk']:g} MB, or lower default_disk (a task's disk is its env tarball "
                 "plus default_disk).")
    return text


def _box(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} unset" if values[name] is None else f"{name} {values[name]:g}"
                     for name in BOX)
