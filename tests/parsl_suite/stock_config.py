"""Parsl's own test suite with Parsl's stock WorkQueueExecutor (the baseline).

Debian ships the legacy top-level ``work_queue`` module; run.sh puts ``stock_alias/`` (an
``ndcctools.work_queue`` alias of it) on PYTHONPATH before pytest starts, because Parsl decides
at import time whether Work Queue is available.
"""

from __future__ import annotations

import os

from parsl.config import Config
from parsl.executors import WorkQueueExecutor
from parsl.providers import LocalProvider


def fresh_config() -> Config:
    return Config(executors=[WorkQueueExecutor(
        port=int(os.environ.get("PONCHO_SUITE_PORT", "9000")), coprocess=False,
        provider=LocalProvider(init_blocks=1, max_blocks=1))])
