"""The Parsl config the examples share: PonchoExecutor on local Work Queue workers.

On a cluster, replace the provider (see configs/slurm.py and configs/htcondor.py); everything
else stays as it is.
"""

from __future__ import annotations

import os
from typing import Any

from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import PonchoExecutor, WorkerOptions


def local_config(workers: int = 2, **executor_options: Any) -> Config:
    """A Parsl config running ``workers`` single-core Work Queue workers on this machine.

    ``PARSL_PONCHO_CHANNELS`` (comma-separated) picks conda channels for envs that need conda
    packages beyond python and pip; python and pip come from a local channel seeded from this
    host's interpreter, so no conda channel needs to be reachable.
    """
    channels = os.environ.get("PARSL_PONCHO_CHANNELS")
    if channels:
        executor_options.setdefault("channels", channels.split(","))
    executor = PonchoExecutor(
        label="poncho",
        provider=LocalProvider(init_blocks=workers, min_blocks=workers, max_blocks=workers),
        **executor_options,
        workers=WorkerOptions(options="--cores 1"),
    )
    return Config(executors=[executor], strategy="none")
