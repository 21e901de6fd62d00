"""Parsl's own test suite with PonchoExecutor: ``fresh_config()`` for ``pytest --config``.

Run it with tests/parsl_suite/run.sh (it is far too slow for the default test run).

A default ``PonchoExecutor()``: Parsl's test modules import pytest (and test_226 pandas) at top
level and their apps are pickled by reference, so a worker imports the whole test module; the
analysis reads those modules' top-level imports, and what it still misses is learnt at run time.
Environment: PONCHO_SUITE_EXEC_MODE (regular | serverless, default regular),
PONCHO_SUITE_EXTRA_PKGS (space-separated, default none), PONCHO_SUITE_PORT, PONCHO_SUITE_CACHE.
"""

from __future__ import annotations

import os

from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor

EXTRA_PKGS = os.environ.get("PONCHO_SUITE_EXTRA_PKGS", "").split()


def fresh_config() -> Config:
    return Config(executors=[PonchoExecutor(
        port=int(os.environ.get("PONCHO_SUITE_PORT", "0")),
        function_exec_mode=os.environ.get("PONCHO_SUITE_EXEC_MODE", "regular"),
        provider=LocalProvider(init_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ.get("PONCHO_SUITE_CACHE"), extra_pkgs=EXTRA_PKGS),
    )])
