"""A user whose pip configuration names a private index (with a password) and a wheel
directory: one app, run once, whose env needs a package only the private index has
(``extra_pkgs``). Nothing here mentions indexes: the build reads pip's config.

Environment: RUN_DIR, PONCHO_CACHE, WORKER, and the user's PIP_* settings.
Prints one JSON line: the result and the env hash.
"""

import json
import os

import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions, env_hash_of


@parsl.python_app
def answer(module):
    import importlib

    return importlib.import_module(module).WHERE  # a name the analysis cannot see


def main():
    executor = PonchoExecutor(
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"],
                        extra_pkgs=["poncho-private-probe==1.0"]),
        workers=WorkerOptions(options="--cores 1", executable=os.environ["WORKER"]),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        future = answer("poncho_private_probe")
        print(json.dumps({"value": future.result(), "hash": env_hash_of(future)}))


if __name__ == "__main__":
    main()
