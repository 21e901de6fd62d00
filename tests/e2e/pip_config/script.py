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

from parsl_poncho import PonchoExecutor, env_hash_of


@parsl.python_app
def answer(module):
    import importlib

    return importlib.import_module(module).WHERE  # a name the analysis cannot see


def main():
    executor = PonchoExecutor(cache_dir=os.environ["PONCHO_CACHE"], worker_options="--cores 1",
                              extra_pkgs=["poncho-private-probe==1.0"],
                              worker_executable=os.environ["WORKER"],
                              provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        future = answer("poncho_private_probe")
        print(json.dumps({"value": future.result(), "hash": env_hash_of(future)}))


if __name__ == "__main__":
    main()
