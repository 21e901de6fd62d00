"""A user's script using the joblib backend and PonchoPoolExecutor, as the README shows them.

No Parsl config is loaded, so the pools start the embedded default executor; its local worker
is WORKER (a wrapper hiding the host's Python), logging to WORKER_LOG. Environment: PONCHO_CACHE,
WORKER, WORKER_LOG, BIG_MB (size of the array shipped to every task).
Prints one JSON line with every result; the test compares them with loky's and the builtins'.
"""

import json
import os
import secrets
import sys

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.svm import SVC

import parsl_poncho.joblib  # noqa: F401 - registers the "poncho" backend
import parsl_poncho.multiprocessing as mp
from parsl_poncho import EnvOptions, WorkerOptions
from parsl_poncho.futures import PonchoPoolExecutor

CHECKOUT = os.path.dirname(os.path.dirname(parsl_poncho.joblib.__file__))
GRID = {"C": [1, 10], "gamma": [0.001, 0.01]}


def where(checkout):
    """Where a task runs: its interpreter, whether it sees the host's Python or checkout, and
    what a Parallel inside it gets."""
    nested = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(4))
    return {"prefix": sys.prefix, "pyenv": os.listdir("/root/.pyenv"),
            "saw_checkout": os.path.exists(os.path.join(checkout, "parsl_poncho")),
            "nested_backend": type(joblib.parallel.get_active_backend()[0]).__name__,
            "nested_pids": len(set(nested)), "pid": os.getpid() == nested[0]}


def checksum(a, i):
    """What a task did with the big array, and how it got it."""
    return float(a[i].sum()), type(a).__name__, bool(a.flags.writeable)


def cube(x, y=0):
    return x ** 3 + y


def pid_of(_x):
    return os.getpid()


OFFSET = None


def set_offset(value):
    """An executor's initializer: sets a module global once per node."""
    global OFFSET
    OFFSET = value


def add_offset(x):
    return x + OFFSET


def search(backend):
    X, y = load_digits(return_X_y=True)
    with joblib.parallel_config(backend=backend):
        gs = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)
    keys = ["params", "mean_test_score", "rank_test_score"] + [
        f"split{i}_test_score" for i in range(3)]
    out = {k: [p if k == "params" else float(p) for p in gs.cv_results_[k]] for k in keys}
    out["best_params"] = gs.best_params_
    with joblib.parallel_config(backend=backend):
        forest = RandomForestClassifier(n_estimators=16, random_state=0, n_jobs=-1)
        out["cross_val_score"] = cross_val_score(forest, X, y, cv=3, n_jobs=-1).tolist()
        out["forest_proba"] = forest.fit(X, y).predict_proba(X[:40]).tolist()
    return out


def main():
    with open("password", "w") as f:  # only our worker may connect (the log counts its files)
        f.write(secrets.token_hex(16))
    mp.embedded.configure(
        cores=2, envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"],
                              options=f"-d all -o {os.environ['WORKER_LOG']}"),
        project_password_file="password")
    report = {"poncho": search("poncho"), "loky": search("loky")}
    with joblib.parallel_config(backend="poncho"):
        report["where"] = joblib.Parallel(n_jobs=-1)(
            joblib.delayed(where)(CHECKOUT) for _ in range(2))
        big = np.random.default_rng(0).random((int(os.environ["BIG_MB"]) * 2 ** 17 // 16, 16))
        report["big"] = {"rows": big.shape[0], "nbytes": big.nbytes,
                         "expected": [float(big[i].sum()) for i in range(16)]}
        report["checksums"] = joblib.Parallel(n_jobs=-1, batch_size=1)(
            joblib.delayed(checksum)(big, i) for i in range(16))
    with PonchoPoolExecutor() as ex:
        report["futures_map"] = list(ex.map(cube, range(40), range(40), chunksize=7))
        report["futures_submit"] = ex.submit(cube, 3, y=1).result()
        report["chunk_pids"] = list(ex.map(pid_of, range(21), chunksize=7))
        report["max_workers"] = ex._max_workers
    with PonchoPoolExecutor(initializer=set_offset, initargs=(1000,)) as ex:
        report["initialized_map"] = list(ex.map(add_offset, range(10), chunksize=3))
    report["cpu_count"] = mp.cpu_count()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
