"""scikit-learn's GridSearchCV(n_jobs=-1) on Work Queue workers: one line picks the backend.

``import parsl_poncho.joblib`` registers the joblib backend "poncho"; under
``joblib.parallel_config(backend="poncho")`` the search's fits run as Work Queue tasks, in an
environment built for them (scikit-learn, numpy, scipy: found by the analysis). With no Parsl
config loaded, local Work Queue workers on this host's cores run them; load a config with a
PonchoExecutor (parsl.load) and the same code runs on that cluster.

Run:  .venv/bin/python examples/joblib_gridsearch.py                 (on Work Queue workers)
      .venv/bin/python examples/joblib_gridsearch.py --backend loky  (joblib's local default)
"""

import argparse
import time

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import parsl_poncho.joblib  # noqa: F401 - registers the "poncho" backend


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="poncho", help="joblib backend (default: poncho)")
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    grid = {"C": [1, 10, 100], "gamma": [0.0001, 0.001, 0.01]}
    start = time.perf_counter()
    with joblib.parallel_config(backend=args.backend):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    scores = " ".join(f"{s:.4f}" for s in search.cv_results_["mean_test_score"])
    print(f"{args.backend}: best {search.best_params_} scores {scores} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":  # the executor's Work Queue manager runs in a spawned process
    main()
