"""Build progress: phase-by-phase lines to a terminal, log records otherwise, and phase timings."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

logger = logging.getLogger("parsl_poncho.build")

ProgressCallback = Callable[[str], None]


def default_progress() -> ProgressCallback:
    """Print to stderr when it is a terminal, else log at INFO on ``parsl_poncho.build``."""
    stream = sys.stderr
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        def to_terminal(line: str) -> None:
            print(f"parsl-poncho: {line}", file=stream, flush=True)

        return to_terminal
    return logger.info


def quiet_progress(line: str) -> None:
    """A progress callback that drops everything but still logs at DEBUG."""
    logger.debug("%s", line)


class Progress:
    """Reports phases as they start and end and records how long each one took."""

    def __init__(self, callback: ProgressCallback | None = None, phases: int = 0):
        self.callback = callback or default_progress()
        self.total = phases
        self.done = 0
        self.seconds: dict[str, float] = {}

    def say(self, line: str) -> None:
        """Pass one line to the callback; a failing callback never breaks a build."""
        try:
            self.callback(line)
        except Exception:  # noqa: BLE001 - progress is advisory
            logger.debug("progress callback failed", exc_info=True)

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as phase ``name``; report start, end and duration."""
        self.done += 1
        counter = f"[{self.done}/{self.total}] " if self.total else ""
        self.say(f"{counter}{name}: {detail}".rstrip(": ").rstrip())
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.say(f"{counter}{name}: done in {elapsed:.2f} s")
