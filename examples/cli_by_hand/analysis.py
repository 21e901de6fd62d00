"""A plain script for the CLI walk-through: cctools' poncho tools read its imports."""

import json

import numpy as np


def summarize(values):
    """Mean and standard deviation, as JSON."""
    arr = np.asarray(values, dtype=float)
    return json.dumps({"mean": float(arr.mean()), "std": float(arr.std())})


if __name__ == "__main__":
    print(summarize([1, 2, 3, 4, 5]))
