"""Parsl's own test suite with PonchoExecutor: ``fresh_config()`` for ``pytest --config``.

Run it with tests/parsl_suite/run.sh (it is far too slow for the default test run).
"""

from __future__ import annotations

import os

from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import PonchoExecutor

#: Parsl's test modules import pytest (and test_226 pandas) at top level, and their apps are
#: pickled by reference, so a worker imports the whole test module. Those imports belong to no
#: dependency of parsl, so the analysis cannot know; PonchoExecutor's pre-dispatch check names
#: them ("cannot import module 'parsl.tests...': No module named 'pytest'") and says to add
#: them with extra_pkgs, which is what this does. PONCHO_SUITE_EXTRA_PKGS="" turns it off.
EXTRA_PKGS = os.environ.get("PONCHO_SUITE_EXTRA_PKGS", "pytest pandas").split()


def fresh_config() -> Config:
    return Config(executors=[PonchoExecutor(
        port=int(os.environ.get("PONCHO_SUITE_PORT", "0")),
        cache_dir=os.environ.get("PONCHO_SUITE_CACHE"),
        extra_pkgs=EXTRA_PKGS,
        provider=LocalProvider(init_blocks=1, max_blocks=1),
    )])
