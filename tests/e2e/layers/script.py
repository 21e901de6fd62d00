"""A scientist's edit-and-rerun loop: run an app (numpy base + a local helper), edit the helper,
run again in the same process (the same workers).

Copied with helper.py into a temporary workflow directory by tests/test_layers_e2e.py.
Environment: RUN_DIR, PONCHO_CACHE, WORKER, MODE (regular | serverless), N (calls per round).
Prints one JSON line: each round's results and env hashes.
"""

import json
import logging
import os
import time
from pathlib import Path

import helper
import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions, env_hash_of

HERE = os.path.dirname(os.path.abspath(__file__))


@parsl.python_app
def compute(n):
    import os
    import sys

    return (helper.total(n), sys.prefix, os.path.exists(os.path.join(HERE, "helper.py")),
            os.environ.get("PARSL_PONCHO_CODE_LAYER"))


def run_round(n):
    futures = [compute(i + 3) for i in range(n)]
    return {"results": [f.result() for f in futures],
            "hashes": sorted({env_hash_of(f) for f in futures})}


def main():
    logging.basicConfig(filename=os.path.join(os.environ["RUN_DIR"], "user.log"),
                        level=logging.INFO)
    n = int(os.environ.get("N", "3"))
    executor = PonchoExecutor(
        function_exec_mode=os.environ.get("MODE", "regular"),
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 1"),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        first = run_round(n)
        source = Path(HERE, "helper.py")
        source.write_text(source.read_text().replace("FACTOR = 1", "FACTOR = 10  # edited"))
        time.sleep(1.5)  # the analysis re-checks local code's stat signature once a second
        logging.getLogger("layers-e2e").info("ROUND 2 starts")
        second = run_round(n)
    print(json.dumps({"first": first, "second": second}))


if __name__ == "__main__":
    main()
