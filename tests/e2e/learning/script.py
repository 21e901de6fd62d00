"""A Parsl user's script whose apps need modules that analysis cannot see.

- ``table``: pandas imports sqlalchemy only inside ``read_sql`` (an optional dependency);
  serverless;
- ``computed``: imports a module whose name is computed at run time; regular;
- ``nowhere``: imports a module that exists on no host.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable), N.
Prints one JSON line: results, errors with the seconds until they arrived.
"""

import importlib
import json
import logging
import os
import time

import pandas as pd
import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions


@parsl.python_app
def table(n):
    frame = pd.read_sql(f"select {n} as x", "sqlite://")  # needs sqlalchemy, lazily
    return int(frame["x"][0])


@parsl.python_app
def computed(word, parsl_resource_specification={"exec_mode": "regular"}):  # noqa: B006
    module = importlib.import_module("".join(["id", "na"]))
    return module.encode(word).decode()


@parsl.python_app
def nowhere(name):
    return importlib.import_module(name).VALUE  # a name no analysis can see


def main():
    logging.basicConfig(filename=os.path.join(os.environ["RUN_DIR"], "user.log"),
                        level=logging.INFO)
    n = int(os.environ.get("N", "2"))
    executor = PonchoExecutor(
        function_exec_mode="serverless",
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 2"),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        results = {"table": [table(i) for i in range(n)],
                   "computed": [computed(f"poncho{i}") for i in range(n)]}
        results = {k: [f.result() for f in fs] for k, fs in results.items()}
        started = time.monotonic()
        try:
            nowhere("poncho_exists_nowhere").result()
            error = None
        except Exception as exc:  # noqa: BLE001 - reported
            error = [type(exc).__name__, str(exc), round(time.monotonic() - started, 1)]
    print(json.dumps({"results": results, "nowhere": error}))


if __name__ == "__main__":
    main()
