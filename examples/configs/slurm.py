"""Ready-to-edit Parsl config: PonchoExecutor with Work Queue workers started by Slurm.

Copy this file beside your script and edit the defaults of ``make_config`` (partition,
account, walltime, node size, channels), or pass them as arguments:

    import parsl
    from slurm import make_config
    with parsl.load(make_config(partition="short", account="my-lab")):
        ...

``from slurm import config`` also works: it is ``make_config()`` with the defaults below.

Each Slurm job (a Parsl "block") starts one ``work_queue_worker`` per node that connects back
to this host; the nodes need ``work_queue_worker`` (cctools) on PATH, or set
``worker_executable`` to its full path, and ``sh``, ``tar``, ``gzip`` — no Python: the
environments bring it.

CI runs this file for real: tests/test_slurm.py starts a one-node Slurm cluster and calls
``make_config(partition="debug", account=None, address="127.0.0.1", ...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

from parsl_poncho import EnvOptions, PonchoExecutor, SizingOptions, WorkerOptions


def make_config(
    partition: str = "compute",
    account: str | None = "my-allocation",
    address: str | None = None,
    port: int = 9123,
    cores_per_node: int = 32,
    memory_per_node_mb: int = 120000,
    max_blocks: int = 8,
    walltime: str = "02:00:00",
    worker_init: str = "module load cctools",
    worker_cache_dir: str = "/tmp/parsl-poncho-$USER",
    channels: list[str] | None = None,
    run_dir: str = "runinfo",
    envs: EnvOptions | None = None,
    **executor_options: Any,
) -> Config:
    """A Parsl config running PonchoExecutor's Work Queue workers in Slurm jobs.

    :param partition: the Slurm partition (``sinfo -s`` lists them).
    :param account: the allocation to charge (``sbatch --account``); None if your site has none.
    :param address: the address compute nodes reach this submit host on (None: this host's
      name). On an InfiniBand cluster ``parsl.addresses.address_by_interface("ib0")`` is often
      the right one.
    :param port: the Work Queue manager port the workers connect to (0: any free port).
    :param cores_per_node: cores of one node; one worker per node offers them all to tasks.
    :param memory_per_node_mb: memory the worker offers to tasks (a little under the node's).
    :param max_blocks: at most this many Slurm jobs at once (blocks start when tasks wait).
    :param walltime: each job's time limit (``HH:MM:SS``); workers exit when it ends.
    :param worker_init: shell lines run in the job before the worker starts (modules, PATH).
    :param worker_cache_dir: node-local scratch where environments are unpacked, once per
      node and shared by its tasks (expanded by the job's shell).
    :param channels: conda channels for packages beyond python and pip (default conda-forge).
    :param run_dir: where Parsl writes its logs.
    :param envs: more ``EnvOptions`` (``channels`` above, if given, wins over its channels).
    :param executor_options: any other ``PonchoExecutor`` argument (e.g. ``env``,
      ``pip_sources``, ``project_password_file``).
    """
    executor = PonchoExecutor(
        label="poncho-slurm",
        address=address if address is not None else address_by_hostname(),
        port=port,
        # Optional: a shared secret workers must present (create it with mode 0600):
        # project_password_file="~/.parsl-poncho-password",
        envs=dataclasses.replace(envs or EnvOptions(), channels=(
            channels or (envs.channels if envs else None) or ["conda-forge"])),
        workers=WorkerOptions(
            cache_dir=worker_cache_dir,
            options=f"--cores {cores_per_node} --memory {memory_per_node_mb}",
        ),
        # Parsl starts a new block when the waiting tasks need more cores than the running
        # workers offer.
        sizing=SizingOptions(scaling_cores_per_worker=cores_per_node),
        provider=SlurmProvider(
            partition=partition,
            account=account,
            nodes_per_block=1,
            init_blocks=0,
            min_blocks=0,
            max_blocks=max_blocks,
            walltime=walltime,
            # srun starts the worker on each node of the job.
            launcher=SrunLauncher(),
            worker_init=worker_init,
            # Extra #SBATCH lines your site needs, e.g. "#SBATCH --qos=normal".
            scheduler_options="",
        ),
        **executor_options,
    )
    return Config(executors=[executor], run_dir=run_dir)


def __getattr__(name: str) -> Any:
    """``from slurm import config``: the config with the defaults above, made when asked for."""
    if name == "config":
        return make_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
