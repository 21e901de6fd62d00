"""Ready-to-edit Parsl config: PonchoExecutor with Work Queue workers started by Slurm.

Not run in CI. Edit the partition, account, walltime and channels, then in your script:

    import parsl
    from slurm import config
    with parsl.load(config):
        ...

Each Slurm job starts one `work_queue_worker` per node that connects back to this host; the
nodes need `work_queue_worker` (cctools) on PATH, or set `worker_executable` to its full path,
and `sh`, `tar`, `gzip` — no Python: the environments bring it.
"""

from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

from parsl_poncho import PonchoExecutor

config = Config(
    executors=[
        PonchoExecutor(
            label="poncho-slurm",
            # The address compute nodes reach this submit host on; on an InfiniBand cluster
            # parsl.addresses.address_by_interface("ib0") is often the right one.
            address=address_by_hostname(),
            port=9123,
            # Optional: a shared secret workers must present (create it with mode 0600).
            # project_password_file="~/.parsl-poncho-password",
            channels=["conda-forge"],
            # Node-local scratch for unpacked environments (one unpack per node, shared by tasks).
            worker_cache_dir="/tmp/parsl-poncho-$USER",
            worker_options="--cores 32 --memory 120000",
            scaling_cores_per_worker=32,
            provider=SlurmProvider(
                partition="compute",
                account="my-allocation",
                nodes_per_block=1,
                init_blocks=0,
                min_blocks=0,
                max_blocks=8,
                walltime="02:00:00",
                launcher=SrunLauncher(),
                worker_init="module load cctools",
            ),
        )
    ],
)
