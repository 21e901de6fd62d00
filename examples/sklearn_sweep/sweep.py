"""Hyperparameter sweep with scikit-learn: a closure and a local helper module.

What it shows: `make_app` returns a closure over the dataset seed; the app calls `score_svc`
from `model_helpers.py` beside this script. parsl-poncho finds scikit-learn (and pins numpy,
scipy, joblib, threadpoolctl to the host's versions) for the base environment, ships
`model_helpers.py` as a small code layer keyed by its content (edit it and the next run packs
and sends only a new code layer, in milliseconds; the base is reused), and runs each point of
the grid on a worker.

Run:  .venv/bin/python examples/sklearn_sweep/sweep.py
"""

from __future__ import annotations

import itertools
import os
import sys
import time

import parsl
from parsl.app.app import python_app

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import model_helpers  # noqa: E402
from examples_common import local_config  # noqa: E402


def make_app(seed: int):
    """An app that closes over the dataset seed."""

    @python_app
    def evaluate(C: float, gamma: float) -> tuple[float, float, float]:
        X, y = model_helpers.make_data(seed)
        return C, gamma, model_helpers.score_svc(X, y, C, gamma)

    return evaluate


def main() -> None:
    evaluate = make_app(seed=7)
    grid = list(itertools.product([0.1, 1.0, 10.0], [0.01, 0.1]))
    start = time.monotonic()
    with parsl.load(local_config()):
        results = [f.result() for f in [evaluate(C, g) for C, g in grid]]
    for C, gamma, score in sorted(results, key=lambda r: -r[2]):
        print(f"C={C:<5} gamma={gamma:<5} accuracy={score:.3f}")
    best = max(results, key=lambda r: r[2])
    elapsed = time.monotonic() - start
    print(f"best: C={best[0]} gamma={best[1]} ({len(grid)} fits in {elapsed:.1f} s)")
    assert 0.5 < best[2] <= 1.0


if __name__ == "__main__":
    main()
