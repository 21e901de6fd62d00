"""Alias Debian's legacy ``work_queue`` module as ``ndcctools.work_queue`` for Parsl's stock
WorkQueueExecutor (the baseline of tests/parsl_suite/run.sh stock and bench/executor.py)."""

import sys

if "/usr/lib/python3/dist-packages" not in sys.path:
    sys.path.append("/usr/lib/python3/dist-packages")

from work_queue import *  # noqa: E402,F403
from work_queue import Task, WorkQueue  # noqa: E402,F401
