"""Parsl's own test suite with Parsl's stock WorkQueueExecutor (the baseline), on Debian's
legacy ``work_queue`` module through a tiny ``ndcctools.work_queue`` alias package."""

from __future__ import annotations

import os
import sys
import tempfile

_ALIAS = os.path.join(tempfile.gettempdir(), "parsl-poncho-ndcctools-alias")


def _install_alias() -> None:
    pkg = os.path.join(_ALIAS, "ndcctools")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(pkg, "work_queue.py"), "w") as f:
        f.write("import sys\n"
                "if '/usr/lib/python3/dist-packages' not in sys.path:\n"
                "    sys.path.append('/usr/lib/python3/dist-packages')\n"
                "from work_queue import *  # noqa: F401,F403\n"
                "from work_queue import WorkQueue, Task  # noqa: F401\n")
    if _ALIAS not in sys.path:
        sys.path.insert(0, _ALIAS)  # spawned processes inherit sys.path
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ALIAS, os.environ.get("PYTHONPATH")) if p)


_install_alias()

from parsl.config import Config  # noqa: E402
from parsl.executors import WorkQueueExecutor  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402


def fresh_config() -> Config:
    return Config(executors=[WorkQueueExecutor(
        port=int(os.environ.get("PONCHO_SUITE_PORT", "9000")), coprocess=False,
        provider=LocalProvider(init_blocks=1, max_blocks=1))])
