"""A Parsl user's script: three apps needing different things, run with PonchoExecutor.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable), N (calls per app).
Prints one JSON line with every result and where the apps ran.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass

import helpers
import numpy as np
import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions, env_hash_of


@dataclass
class Weights:
    """A module-level object that a closure captures."""

    a: float
    b: float

    def apply(self, x: float) -> float:
        return self.a * x + self.b


WEIGHTS = Weights(2.0, 1.0)


@parsl.python_app
def norm(n):
    import os
    import sys

    value = float(np.linalg.norm(np.arange(n, dtype=float)))
    return value, sys.prefix, os.path.exists("/work/main/parsl_poncho"), os.listdir("/root/.pyenv")


@parsl.python_app
def steps(n):
    return helpers.collatz_steps(n)


def make_scorer(weights):
    def score(x):
        return weights.apply(x)

    return score


score = parsl.python_app(make_scorer(WEIGHTS))


def main():
    logging.basicConfig(filename=os.path.join(os.environ["RUN_DIR"], "user.log"),
                        level=logging.INFO)
    n = int(os.environ.get("N", "4"))
    executor = PonchoExecutor(
        provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 1"),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        futures = {
            "norm": [norm(i + 3) for i in range(n)],
            "steps": [steps(i + 3) for i in range(n)],
            "score": [score(float(i)) for i in range(n)],
        }
        results = {k: [f.result() for f in fs] for k, fs in futures.items()}
        hashes = {k: sorted({env_hash_of(f) for f in fs}) for k, fs in futures.items()}
    print(json.dumps({"results": results, "hashes": hashes, "python": sys.executable}))


if __name__ == "__main__":
    main()
