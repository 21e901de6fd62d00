"""Tasks the manager process holds back from Work Queue until workers have room for them.

Work Queue (9.9 and its successors) looks at every ready task in every round of ``wait``,
sizing each against the workers (``task_min_resources``, ``rmsummary`` arithmetic). With
thousands of tasks submitted at once, most of the manager's CPU went there: each round cost
O(tasks waiting), and a task sees many rounds. The manager keeps them here instead and gives
Work Queue at most about two tasks per connected core (never fewer than
:data:`MIN_IN_FLIGHT`), highest ``priority`` first, then in the order they came.

Tasks that ask for no cores (a ``multiprocessing`` Process: long-lived, and possibly waiting
for its siblings at a barrier or a pipe) are never held and never count against the cap:
holding one back could leave the others waiting for it forever.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Iterator

#: Tasks Work Queue may hold even while no worker is connected (or the count is unknown).
MIN_IN_FLIGHT = 32
#: Seconds between looks at how many cores the connected workers offer.
_REFRESH = 1.0


class Backlog:
    """Tasks not yet given to Work Queue, by priority then arrival."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._unheld: list[Any] = []  # tasks asking for no cores: given at once
        self._seq = itertools.count()
        self._cap, self._when = MIN_IN_FLIGHT, 0.0

    def __len__(self) -> int:
        return len(self._heap) + len(self._unheld)

    def add(self, msg: Any) -> None:
        """Hold ``msg`` (a TaskToWq) until :meth:`take` finds room for it."""
        if holds_no_core(msg):
            self._unheld.append(msg)
            return
        priority = float(msg.resources.get("priority") or 0)
        heapq.heappush(self._heap, (-priority, next(self._seq), msg))

    def take(self, in_flight: int, q: Any) -> Iterator[Any]:
        """The held tasks to submit now: while Work Queue ``q`` holds fewer than the cap
        (``in_flight``: the tasks it holds that ask for cores)."""
        unheld, self._unheld = self._unheld, []
        yield from unheld
        cap = self.cap(q)
        while self._heap and in_flight < cap:
            yield heapq.heappop(self._heap)[2]
            in_flight += 1

    def cap(self, q: Any) -> int:
        """How many tasks Work Queue may hold: twice the cores of its connected workers, at
        least :data:`MIN_IN_FLIGHT` (asked of ``q`` at most every second)."""
        now = time.monotonic()
        if now - self._when > _REFRESH:
            self._when = now
            try:
                self._cap = max(MIN_IN_FLIGHT, 2 * int(q.stats.total_cores))
            except Exception:  # noqa: BLE001 - keep the last cap; never fatal to the loop
                pass
        return self._cap


def holds_no_core(msg: Any) -> bool:
    """The task asks for no cores (explicitly 0), so it does not count against the cap."""
    cores = msg.resources.get("cores")
    return cores is not None and float(cores) == 0
