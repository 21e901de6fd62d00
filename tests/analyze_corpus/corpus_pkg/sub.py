"""Submodule of the local package: importing it needs pandas."""

import pandas as pd

from . import util


def summarize(values):
    """A pandas summary."""
    return util.label(pd.Series(values).describe())
