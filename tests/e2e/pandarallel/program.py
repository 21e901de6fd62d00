"""A pandarallel user: score the rows of a DataFrame, transform a column and summarise groups
with ``parallel_apply``, then print the results as JSON. Written for the standard library
(pandarallel imports ``multiprocessing`` itself); the test adds one ``patch()`` call before
``from pandarallel import pandarallel`` to run it on the cluster.

Environment: ROWS (default 2000); MEMORY_FS: "default" leaves ``use_memory_fs`` to pandarallel
(files in /dev/shm), anything else passes ``use_memory_fs=False`` (data through multiprocessing).
"""

import json
import math
import os
import sys

import pandas as pd
from pandarallel import pandarallel


def score(row):
    return round(math.sqrt(row.a) * row.b - math.log1p(row.a % 7), 9)


def spread(group):
    return round(float(group.b.max() - group.b.min()), 9)


def where_am_i(_):
    """The interpreter running the task, and what it sees of the host's Python."""
    saw_pyenv = os.path.isdir("/root/.pyenv") and bool(os.listdir("/root/.pyenv"))
    return json.dumps({"prefix": sys.prefix, "saw_pyenv": saw_pyenv, "pandas": pd.__version__})


def main():
    memory_fs = None if os.environ.get("MEMORY_FS") == "default" else False
    pandarallel.initialize(nb_workers=2, progress_bar=False, verbose=0, use_memory_fs=memory_fs)
    rows = int(os.environ.get("ROWS", "2000"))
    df = pd.DataFrame({"a": range(rows), "b": [(i * 37 % 101) / (10 + i % 5) for i in range(rows)],
                       "key": [f"k{i % 5}" for i in range(rows)]})
    scores = df.parallel_apply(score, axis=1)
    squares = df.a.parallel_apply(lambda x: x * x % 1009)
    spreads = df.groupby("key").parallel_apply(spread)
    where = df.head(4).parallel_apply(where_am_i, axis=1)
    print(json.dumps({"scores": scores.tolist(), "squares": squares.tolist(),
                      "spreads": spreads.to_dict(), "where": [json.loads(w) for w in where]}))


if __name__ == "__main__":
    main()
