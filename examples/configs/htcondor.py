"""Ready-to-edit Parsl config: PonchoExecutor with Work Queue workers started by HTCondor.

Not run in CI. Edit the requirements, the channels and the worker resources, then
`from htcondor import config` in your script and `parsl.load(config)`.

HTCondor execute nodes rarely share software with the submit node: this is where shipped
environments pay off. The job transfers nothing itself; Work Queue sends each environment
tarball once per worker and the worker shim unpacks it once per node.
"""

from parsl.config import Config
from parsl.providers import CondorProvider

from parsl_poncho import EnvOptions, PonchoExecutor, SizingOptions, WorkerOptions

config = Config(
    executors=[
        PonchoExecutor(
            label="poncho-condor",
            port=9124,
            envs=EnvOptions(channels=["conda-forge"]),
            workers=WorkerOptions(options="--cores 4 --memory 8000 --disk 20000"),
            sizing=SizingOptions(scaling_cores_per_worker=4),
            provider=CondorProvider(
                nodes_per_block=1,
                init_blocks=1,
                max_blocks=20,
                # work_queue_worker must be on the execute nodes (cctools), or ship it with the job.
                worker_init="export PATH=$HOME/cctools/bin:$PATH",
                requirements='(OpSys == "LINUX") && (Arch == "X86_64")',
                scheduler_options=(
                    "request_cpus = 4\nrequest_memory = 8000\nrequest_disk = 20000000"
                ),
            ),
        )
    ],
)
