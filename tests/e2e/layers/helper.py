"""A local helper of the workflow (edited between the two rounds of script.py)."""

import numpy as np

FACTOR = 1


def total(n):
    return float(np.arange(n, dtype=float).sum()) * FACTOR
