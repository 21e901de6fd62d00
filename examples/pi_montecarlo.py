"""Quick start: estimate pi by Monte Carlo with numpy, on local Work Queue workers.

What it shows: the only change from a stock Parsl + Work Queue config is `PonchoExecutor`.
parsl-poncho sees that `sample` needs numpy, builds a conda environment with the submit host's
python, cloudpickle and numpy (once; later runs reuse it from the cache), ships it to the
workers, and runs every task inside it.

Run:  .venv/bin/python examples/pi_montecarlo.py [--tasks 8] [--samples 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import parsl
from examples_common import local_config
from parsl.app.app import python_app

from parsl_poncho import env_hash_of


@python_app
def sample(n: int, seed: int) -> int:
    """Count how many of n random points in the unit square fall inside the quarter circle."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    return int(np.count_nonzero((xy * xy).sum(axis=1) <= 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1_000_000)
    args = parser.parse_args()

    start = time.monotonic()
    with parsl.load(local_config()):
        futures = [sample(args.samples, seed) for seed in range(args.tasks)]
        inside = sum(f.result() for f in futures)
        env_hash = env_hash_of(futures[0])
    estimate = 4.0 * inside / (args.tasks * args.samples)
    print(f"pi ~= {estimate:.5f} from {args.tasks} tasks x {args.samples} samples "
          f"in {time.monotonic() - start:.1f} s")
    if env_hash:
        print(f"tasks ran in environment {env_hash[:12]}")
    assert abs(estimate - np.pi) < 0.01, estimate


if __name__ == "__main__":
    main()
