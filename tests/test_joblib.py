"""The joblib backend "poncho" (parsl_poncho.joblib), on the standard library's fork pool.

The backend takes its pool from ``mp_context`` (a backend parameter of ``parallel_config``);
here the standard library's fork context stands in for the cluster, so these tests check the
adapter: joblib's API, n_jobs, batching, errors, nesting, and scikit-learn's results against
loky's. tests/test_joblib_e2e.py runs it on Work Queue workers.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import joblib
import numpy as np
import pytest
from joblib.parallel import get_active_backend

import parsl_poncho.joblib as pj
from parsl_poncho.errors import PonchoError

FORK = multiprocessing.get_context("fork")


class TwoCores:
    """A context whose cluster has 2 cores; counts the pools it makes."""

    def __init__(self) -> None:
        self.pools: list[int] = []

    def Pool(self, processes: int) -> Any:  # noqa: N802 - the multiprocessing API's name
        self.pools.append(processes)
        return FORK.Pool(processes)

    def cpu_count(self) -> int:
        return 2


@pytest.fixture(autouse=True)
def _no_kept_pools():
    yield
    pj.close_pools()


def poncho(**kw: Any) -> Any:
    return joblib.parallel_config(backend="poncho", mp_context=kw.pop("mp_context", FORK), **kw)


def square(x: int) -> int:
    return x * x


def inner_backend(_: int) -> tuple[str, int]:
    """Which backend a Parallel inside a task gets, and how many pids run its calls."""
    backend, n_jobs = get_active_backend()
    pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(os.getpid)() for _ in range(4))
    return type(backend).__name__, len(set(pids))


def fail_on(x: int) -> int:
    if x == 5:
        raise KeyError(f"item {x}")
    return x


def test_import_registers_the_backend() -> None:
    assert "poncho" in joblib.parallel.BACKENDS
    with poncho():
        backend, n_jobs = get_active_backend()
    assert isinstance(backend, pj.PonchoBackend)


def test_joblib_older_than_1_5_is_refused_with_the_fix() -> None:
    pj.check_joblib_version("1.5.0")
    pj.check_joblib_version("1.6.0.dev0")
    pj.check_joblib_version("2.0")
    with pytest.raises(PonchoError, match=r"joblib 1.4.2 is too old .* pip install -U"):
        pj.check_joblib_version("1.4.2")


def test_parallel_results_in_order() -> None:
    with poncho():
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(50))
    assert out == [i * i for i in range(50)]


def test_return_as_generator_unordered() -> None:
    with poncho():
        out = joblib.Parallel(n_jobs=2, return_as="generator_unordered")(
            joblib.delayed(square)(i) for i in range(20))
        assert sorted(out) == [i * i for i in range(20)]


def test_n_jobs_minus_one_is_the_clusters_cores() -> None:
    context = TwoCores()
    backend = pj.PonchoBackend(mp_context=context)
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(-5) == 1
    assert backend.effective_n_jobs(None) == 2  # joblib's default for this backend: all cores
    assert backend.effective_n_jobs(7) == 7
    with pytest.raises(PonchoError, match="n_jobs == 0 in Parallel has no meaning"):
        backend.effective_n_jobs(0)
    with poncho(mp_context=context):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(4))
        joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(4))
    assert context.pools == [2]  # one pool of the cluster's size, kept between calls


def test_work_queue_holds_a_batch_per_core_ahead_when_all_cores_are_used() -> None:
    context = TwoCores()
    with poncho(mp_context=context, queue_ahead=True):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(4))
        joblib.Parallel(n_jobs=1)(joblib.delayed(square)(i) for i in range(4))  # sequential
        joblib.Parallel(n_jobs=3)(joblib.delayed(square)(i) for i in range(4))
    assert context.pools == [4, 6]
    pj.close_pools()
    smaller = TwoCores()
    smaller.cpu_count = lambda: 8  # type: ignore[method-assign]
    with poncho(mp_context=smaller, queue_ahead=True):
        joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(4))
    assert smaller.pools == [2]  # fewer jobs than cores: exactly n_jobs in flight


def test_n_jobs_one_runs_here_sequentially() -> None:
    context = TwoCores()
    with poncho(mp_context=context):
        out = joblib.Parallel(n_jobs=1)(joblib.delayed(os.getpid)() for _ in range(3))
    assert out == [os.getpid()] * 3 and context.pools == []


def test_nested_parallel_runs_sequentially_in_the_task() -> None:
    with poncho():
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(inner_backend)(i) for i in range(2))
    assert out == [("SequentialBackend", 1)] * 2


def test_remote_exception_keeps_its_type() -> None:
    with poncho(), pytest.raises(KeyError, match="item 5"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on)(i) for i in range(10))


def test_timeout_raises_joblibs_timeout_error() -> None:
    """joblib raises multiprocessing.TimeoutError, whatever the backend."""
    with poncho(), pytest.raises(multiprocessing.TimeoutError, match="^$"):
        joblib.Parallel(n_jobs=2, timeout=0.3)(joblib.delayed(time.sleep)(2) for _ in range(2))


def test_batches_grow_for_fast_calls() -> None:
    """joblib's auto-batching applies: many tiny calls travel in few tasks."""
    submitted: list[int] = []

    class Counting(pj.PonchoBackend):
        def submit(self, func: Any, callback: Any = None) -> Any:
            submitted.append(len(func.items))
            return super().submit(func, callback)

    joblib.register_parallel_backend("poncho-counting", Counting)
    with joblib.parallel_config(backend="poncho-counting", mp_context=FORK):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(3000))
    assert out == [i * i for i in range(3000)]
    assert sum(submitted) == 3000 and max(submitted) > 1 and len(submitted) < 1500


def test_sharedmem_requirement_falls_back_to_threads() -> None:
    with poncho():
        out = joblib.Parallel(n_jobs=2, require="sharedmem")(
            joblib.delayed(os.getpid)() for _ in range(4))
    assert out == [os.getpid()] * 4


@pytest.mark.slow
def test_sklearn_estimators_give_lokys_results() -> None:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)

    def run() -> tuple:
        search = GridSearchCV(SVC(), {"C": [1, 10], "gamma": [0.001, 0.01]}, cv=3,
                              n_jobs=-1).fit(X, y)
        forest = RandomForestClassifier(n_estimators=12, random_state=0, n_jobs=-1)
        scores = cross_val_score(forest, X, y, cv=3, n_jobs=-1)
        proba = forest.fit(X, y).predict_proba(X[:50])
        return (search.cv_results_["mean_test_score"].tolist(), search.best_params_,
                scores.tolist(), proba.tolist())

    with poncho():
        ours = run()
    with joblib.parallel_config(backend="loky"):
        lokys = run()
    assert ours == lokys
    assert np.isclose(ours[0][2], 0.976, atol=0.01)  # a real fit, not an empty result


class AppWarning(UserWarning):
    pass


def test_warning_categories_inside_sklearn_wrappers_are_named_for_the_analysis() -> None:
    """scikit-learn's delayed carries warnings.filters, which the analysis cannot open."""
    import warnings

    from sklearn.utils.parallel import delayed as sk_delayed

    seen: list[tuple] = []

    class Recording(pj.PonchoBackend):
        def submit(self, func: Any, callback: Any = None) -> Any:
            seen.append(pj.hidden_classes(func.items))
            return super().submit(func, callback)

    joblib.register_parallel_backend("poncho-recording", Recording)
    from sklearn.utils.parallel import Parallel as SkParallel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AppWarning)
        with joblib.parallel_config(backend="poncho-recording", mp_context=FORK):
            assert SkParallel(n_jobs=2)(sk_delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    assert seen and all(AppWarning in classes for classes in seen)
    assert all(c.__module__ != "builtins" for classes in seen for c in classes)


def test_a_kept_pool_that_was_closed_is_replaced() -> None:
    pool = pj.shared_pool(2, FORK)
    assert pj.shared_pool(2, FORK) is pool
    pool.close()
    pool.join()
    assert pj.shared_pool(2, FORK) is not pool


def checksum(a: np.ndarray, i: int) -> float:
    return float(a[i].sum())


def test_large_arguments_go_to_a_poncho_pool_as_cached_inputs(tmp_path: Any,
                                                              monkeypatch: Any) -> None:
    """With a parsl_poncho pool, a batch's big array becomes a cached input of its task."""
    from parsl_poncho.multiprocessing.pool import Pool as PonchoPool

    sent: list[tuple] = []
    monkeypatch.chdir(tmp_path)  # the forked pool runs in the data dir, as tasks in a sandbox
    inner = FORK.Pool(2)

    class RecordingPool(PonchoPool):
        def __init__(self, processes: int) -> None:  # no executor: record, run on ``inner``
            self._state = "RUN"

        def apply_async(self, func: Any, args: Any = (), kwds: Any = None, callback: Any = None,
                        error_callback: Any = None, *, cached_inputs: Any = ()) -> Any:
            sent.append((func, args, tuple(cached_inputs)))
            return inner.apply_async(func, args, kwds or {}, callback, error_callback)

        def close(self) -> None:
            self._state = "CLOSE"

        def join(self) -> None:
            inner.terminate()

    class Context(TwoCores):
        def Pool(self, processes: int) -> Any:  # noqa: N802
            return RecordingPool(processes)

    big = np.random.default_rng(1).random((2000, 100))  # 1.6 MB
    with poncho(mp_context=Context(), data_dir=str(tmp_path)):
        out = joblib.Parallel(n_jobs=2, batch_size=1)(
            joblib.delayed(checksum)(big, i) for i in range(6))
    assert out == [checksum(big, i) for i in range(6)]
    assert len(sent) == 6
    names = {f.remote for _, _, files in sent for f in files}
    assert len(names) == 1 and all(f.cache for _, _, files in sent for f in files)
    (name,) = names
    assert name.startswith("poncho-data-") and (tmp_path / name).exists()
    calls, needs = sent[0][1]
    assert type(calls[0][1][0]).__name__ == "ShippedArg"  # the array itself stays here


def test_without_joblib_the_import_names_the_extra() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'joblib':\n"
            "            raise ImportError('No module named joblib')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import parsl_poncho.joblib\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "pip install 'parsl-poncho[joblib]'" in proc.stderr.splitlines()[-1]


def test_a_kept_pool_follows_the_current_executor(monkeypatch: Any) -> None:
    """A pool kept for an executor that is no longer the current one (another Parsl config
    was loaded) is terminated and replaced."""
    import types

    import parsl_poncho.multiprocessing.link as link

    current = {"executor": "first"}
    monkeypatch.setattr(link, "current_executor", lambda: current["executor"])
    made: list[Any] = []

    class FakePool:
        def __init__(self, processes: int) -> None:
            self._state = "RUN"
            self._link = types.SimpleNamespace(executor=current["executor"])
            made.append(self)

        def terminate(self) -> None:
            self._state = "TERMINATE"

        def close(self) -> None:
            self._state = "CLOSE"

        def join(self) -> None:
            pass

    context = types.SimpleNamespace(Pool=FakePool, cpu_count=lambda: 2)
    first = pj.shared_pool(2, context)
    assert pj.shared_pool(2, context) is first
    current["executor"] = "second"
    second = pj.shared_pool(2, context)
    assert second is not first and first._state == "TERMINATE"
    assert second._link.executor == "second" and len(made) == 2
