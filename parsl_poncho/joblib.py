"""The joblib backend ``"poncho"``: ``joblib.Parallel`` (scikit-learn's ``n_jobs``) on the cluster.

Usage::

    import joblib
    import parsl_poncho.joblib  # registers the backend (or call parsl_poncho.joblib.register())

    with joblib.parallel_config(backend="poncho"):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)

A thin adapter over :class:`parsl_poncho.multiprocessing.Pool`, through joblib's public
custom-backend API (``ParallelBackendBase``, ``register_parallel_backend``); nothing in joblib
is patched:

* ``n_jobs=-1`` is the cluster's cores (``parsl_poncho.multiprocessing.cpu_count()``); the pool
  is kept for later ``Parallel`` calls (as loky keeps its executor), so its function servers
  and their imports stay warm; when a call uses every core, twice as many batches as cores are
  handed to Work Queue, which starts the next one as soon as a core frees;
* each joblib batch (auto-sized, as for loky) is one ``apply_async`` of the pool, so one Work
  Queue task, run in a fork of the pool's function server;
* numpy arrays and pandas objects of at least ``max_nbytes`` (joblib's parameter, default 1 MB)
  passed as top-level arguments are sent once per node as cached, content-addressed input files
  and memory-mapped there (``mmap_mode``, default ``"r"``, read-only as with loky): see
  :mod:`parsl_poncho.shipped`;
* a ``Parallel`` run inside a task runs sequentially there;
* ``n_jobs=1`` runs sequentially here, as joblib's process backends do.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

import cloudpickle

from parsl_poncho import _joblib_remote
from parsl_poncho.errors import PonchoError
from parsl_poncho.shipped import DEFAULT_MAX_NBYTES, ArgumentShipper, ShippedFile

try:
    import joblib
    from joblib.parallel import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as exc:  # the extra is optional: say how to get it
    raise PonchoError(f"parsl_poncho.joblib needs joblib >= 1.5 ({exc}): pip install "
                      "'parsl-poncho[joblib]'") from exc

__all__ = ["BACKEND_NAME", "JoblibBackendError", "PonchoBackend", "check_joblib_version",
           "close_pools", "hidden_classes", "register", "shared_pool"]

#: The name to give ``joblib.parallel_config(backend=...)``.
BACKEND_NAME = "poncho"
#: Batches in flight per core when a Parallel call uses all the cluster's cores.
QUEUED_PER_CORE = 2
#: Seconds a backend trusts the number of cores it last asked for.
CORES_TTL = 10.0


class JoblibBackendError(PonchoError, ValueError):
    """A joblib Parallel call asked the poncho backend for something it cannot do."""


def register() -> None:
    """Make ``joblib.parallel_config(backend="poncho")`` available (done on import; cheap and
    idempotent).

    :raises JoblibBackendError: joblib is older than 1.5 (the backend API with ``submit``).
    """
    check_joblib_version(joblib.__version__)
    cloudpickle.register_pickle_by_value(_joblib_remote)
    joblib.register_parallel_backend(BACKEND_NAME, PonchoBackend)


def check_joblib_version(version: str) -> None:
    """:raises JoblibBackendError: ``version`` is below 1.5, whose backends have ``submit``."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    if tuple(parts + [0] * (2 - len(parts))) < (1, 5):
        raise JoblibBackendError(
            f"joblib {version} is too old for the poncho backend, which needs joblib >= 1.5 "
            "(its backend API with submit): pip install -U 'joblib>=1.5'")


class PonchoBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ParallelBackendBase over a :class:`parsl_poncho.multiprocessing.Pool`.

    :param mp_context: where pools come from: anything with ``Pool(processes)`` and
        ``cpu_count()``; default ``parsl_poncho.multiprocessing``.
    :param data_dir: where large arguments are written before they are sent (see
        :class:`~parsl_poncho.shipped.ArgumentShipper`).
    :param queue_ahead: let Work Queue hold a batch per core beyond those running (default:
        for parsl_poncho.multiprocessing pools, whose tasks Work Queue schedules on cores; a
        standard library pool would run them all at once).
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_sharedmem = False  # require="sharedmem" falls back to threads, here
    uses_threads = False

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, *, mp_context: Any = None,
                 data_dir: str | None = None, queue_ahead: bool | None = None,
                 **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self._context = mp_context
        self._data_dir = data_dir
        self._queue_ahead = mp_context is None if queue_ahead is None else queue_ahead
        self._pool: Any = None
        self._shipper = ArgumentShipper(data_dir=data_dir)
        self._cores_known: tuple[float, int] | None = None

    # -- sizing ---------------------------------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs`` as joblib counts it, against the cluster's cores: -1 is all of them,
        -2 all but one, None the backend's default (-1).

        :raises JoblibBackendError: ``n_jobs == 0``.
        """
        if n_jobs == 0:
            raise JoblibBackendError("n_jobs == 0 in Parallel has no meaning: use -1 for the "
                                     "cluster's cores, or a positive number of tasks in flight")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(self._cores() + 1 + n_jobs, 1)
        return n_jobs

    def _cores(self) -> int:
        """The cluster's cores, asked at most every :data:`CORES_TTL` seconds (with a loaded
        Parsl config, asking runs ``work_queue_status``)."""
        now = time.monotonic()
        if self._cores_known is None or now - self._cores_known[0] > CORES_TTL:
            self._cores_known = (now, int(_context_of(self._context).cpu_count()))
        return self._cores_known[1]

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, max_nbytes: int | None = DEFAULT_MAX_NBYTES,
                  mmap_mode: str | None = "r", **backend_kwargs: Any) -> int:
        """Size the pool for a ``Parallel`` call; ``max_nbytes`` and ``mmap_mode`` are
        joblib's ``Parallel`` parameters (see :class:`~parsl_poncho.shipped.ArgumentShipper`)."""
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if n == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = shared_pool(self._in_flight(n), self._context)
        if not _takes_cached_inputs(self._pool):
            max_nbytes = None  # a pool without cached inputs (the standard library's) gets all
        self._shipper = ArgumentShipper(max_nbytes, mmap_mode, self._data_dir)
        return n

    def _in_flight(self, n_jobs: int) -> int:
        """Batches handed to the pool at once: ``n_jobs``, or with ``queue_ahead`` and when
        ``n_jobs`` takes every core of the cluster, twice that: Work Queue then holds the next
        batch and starts it the moment a core frees (as loky's executor queues calls ahead of
        its workers), and still runs no more batches at once than there are cores."""
        if not self._queue_ahead:
            return n_jobs
        return QUEUED_PER_CORE * n_jobs if n_jobs >= self._cores() else n_jobs

    # -- running batches ------------------------------------------------------------------------
    def submit(self, func: Any, callback: Callable[[Any], Any] | None = None) -> Any:
        """One joblib batch -> one pool task, its large arguments shipped as cached files."""
        calls, files = self._shipper.ship_calls(func.items)
        return _submit_with_files(self._pool, _joblib_remote.run_batch,
                                  (calls, hidden_classes(calls)), files, callback)

    def retrieve_result_callback(self, out: Any) -> Any:
        """The pool hands over a batch's list of results, or the exception it raised."""
        if isinstance(out, BaseException):
            raise out
        return out

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """A ``Parallel`` started from inside a batch (on a worker) runs sequentially."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def stop_call(self) -> None:
        self._shipper.forget()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """joblib drops the results of batches still running after an error; the pool is shared
        with later calls, so it is kept (their tasks finish on the workers)."""


# -- the pools, shared between Parallel calls --------------------------------------------------

_pools: dict[tuple[int, int], Any] = {}
_pools_lock = threading.Lock()


def shared_pool(processes: int, mp_context: Any = None) -> Any:
    """The pool of ``processes`` of ``mp_context``, created on first use and kept (its function
    servers stay warm for the next ``Parallel`` call); replaced when it was closed, or when the
    executor it sends to is no longer the current one (another Parsl config was loaded)."""
    context = _context_of(mp_context)
    key = (id(context), processes)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and not _usable(pool):
            _pools.pop(key)
            pool.terminate()
            pool = None
        if pool is None:
            pool = context.Pool(processes)
            _pools[key] = pool
        return pool


def _usable(pool: Any) -> bool:
    """Whether a kept pool still runs, and on the executor a new pool would use."""
    if getattr(pool, "_state", "RUN") != "RUN":
        return False
    link = getattr(pool, "_link", None)  # a parsl_poncho.multiprocessing pool's executor link
    if link is None:
        return True
    from parsl_poncho.multiprocessing.link import current_executor

    return link.executor is current_executor()


def close_pools() -> None:
    """Close and join the pools the backend keeps (the next ``Parallel`` call starts anew)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()
        pool.join()


def _takes_cached_inputs(pool: Any) -> bool:
    """Whether ``pool`` can send files with a task: a parsl_poncho.multiprocessing pool can
    (its ``apply_async(..., cached_inputs=)``), the standard library's cannot."""
    module = sys.modules.get("parsl_poncho.multiprocessing.pool")
    return module is not None and isinstance(pool, module.Pool)


def _submit_with_files(pool: Any, fn: Callable[..., Any], args: tuple,
                      files: list[ShippedFile], callback: Callable[[Any], Any] | None) -> Any:
    """``pool.apply_async(fn, args)``, with ``files`` as cached inputs of its task."""
    if not files:
        return pool.apply_async(fn, args, callback=callback, error_callback=callback)
    from parsl_poncho.workqueue import FileToWq

    inputs = [FileToWq(f.path, f.name, cache=True) for f in files]
    return pool.apply_async(fn, args, callback=callback, error_callback=callback,
                            cached_inputs=inputs)


def hidden_classes(calls: list[tuple[Callable, tuple, dict]]) -> tuple[type, ...]:
    """Classes that a batch's calls pickle inside objects the analysis treats as opaque.

    scikit-learn's ``delayed`` wraps each function with the caller's ``warnings.filters``,
    whose categories may come from any module loaded here (Parsl loads ``requests``, which
    brings ``urllib3.exceptions.DependencyWarning``): unpickling the call on a worker imports
    them. The wrapper is scikit-learn's, so the analysis does not open it; naming the classes
    beside the calls puts their modules in the environment at once, instead of after a failed
    task (runtime learning would get there too, one rebuild per missing module).
    """
    found: dict[type, None] = {}
    for func, _, _ in calls:
        for entry in getattr(func, "warning_filters", None) or ():
            category = entry[2] if isinstance(entry, tuple) and len(entry) > 2 else None
            if isinstance(category, type) and category.__module__ != "builtins":
                found[category] = None
    return tuple(found)


def _context_of(mp_context: Any) -> Any:
    if mp_context is not None:
        return mp_context
    import parsl_poncho.multiprocessing as mp

    return mp


register()
