"""A PyTorch user's script: torch installed the usual way for CPU nodes (``2.13.0+cpu``, from
the wheel directory that this host's pip configuration names), used by apps in both exec modes.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable).
Prints one JSON line: each app's results, where it ran, and what the hermetic build said.
"""

import json
import logging
import os
import sys

import parsl
import torch
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PipSources, PonchoExecutor, WorkerOptions, env_hash_of


def matmul_trace(n, parsl_resource_specification={}):  # noqa: B006 - Parsl reads it
    import glob
    import os
    import sys

    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        parent = f.read().replace(b"\0", b" ").decode()
    server_logs = glob.glob(sys.prefix + ".server-v1*/log")  # a function server's, if any
    preloaded = any("preload torch: ok" in open(p).read() for p in server_logs)
    a = torch.arange(n * n, dtype=torch.float64).reshape(n, n)
    return {"trace": float((a @ a).trace()), "version": torch.__version__,
            "preloaded": preloaded, "parent": parent, "prefix": sys.prefix,
            "pyenv": os.listdir("/root/.pyenv") if os.path.isdir("/root/.pyenv") else None}


def main():
    logging.basicConfig(filename=os.path.join(os.environ["RUN_DIR"], "user.log"),
                        level=logging.INFO)
    common = dict(envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
                  workers=WorkerOptions(options="--cores 1", executable=os.environ["WORKER"]))
    configured = PonchoExecutor(label="configured", **common,
                                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    hermetic = PonchoExecutor(label="hermetic", pip_sources=PipSources.hermetic(), **common,
                              provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))
    config = Config(executors=[configured, hermetic], run_dir=os.environ["RUN_DIR"],
                    strategy="none")
    report = {"host_version": torch.__version__}
    configured_app = parsl.python_app(matmul_trace, executors=["configured"])
    hermetic_app = parsl.python_app(matmul_trace, executors=["hermetic"])
    with parsl.load(config):
        for mode in ("regular", "serverless"):
            futures = [configured_app(n, parsl_resource_specification={"exec_mode": mode})
                       for n in (3, 4, 5)]
            report[mode] = [f.result() for f in futures]
            report[mode + "_hash"] = sorted({env_hash_of(f) for f in futures})
        try:
            hermetic_app(3).result()
            report["hermetic_error"] = None
        except Exception as exc:  # noqa: BLE001 - the test reads the message
            report["hermetic_error"] = [type(exc).__name__, str(exc)]
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
