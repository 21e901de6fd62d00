"""parsl-poncho: run each Parsl app in a conda environment built for it and shipped by Work Queue.

Public API (imported lazily, so ``import parsl_poncho`` stays cheap and does not import parsl)::

    from parsl_poncho import PonchoExecutor, env_hash_of, Analyzer, EnvStore, Env, Spec
    from parsl_poncho import resources_of, TaskResources   # what a finished task used
    from parsl_poncho import PipSources    # where the pip part installs from (default: as pip)
    from parsl_poncho import SharedDir, Url  # env_delivery: how envs reach the nodes
    from parsl_poncho import EnvOptions, WorkerOptions, SizingOptions  # the executor's groups
    from parsl_poncho.analyze import analyze   # the function; ``parsl_poncho.analyze`` is
                                               # the subpackage, so it cannot be re-exported
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "PonchoExecutor": "parsl_poncho.executor",
    "env_hash_of": "parsl_poncho.tasks",
    "resources_of": "parsl_poncho.monitor",
    "TaskResources": "parsl_poncho.monitor",
    "Analyzer": "parsl_poncho.analyze",
    "EnvStore": "parsl_poncho.store",
    "Env": "parsl_poncho.store",
    "Spec": "parsl_poncho.spec",
    "PipSources": "parsl_poncho.pip_sources",
    "SharedDir": "parsl_poncho.delivery",
    "Url": "parsl_poncho.delivery",
    "EnvOptions": "parsl_poncho.options",
    "WorkerOptions": "parsl_poncho.options",
    "SizingOptions": "parsl_poncho.options",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'parsl_poncho' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
