"""Benchmark serverless against regular mode, beside Work Queue's floor and Parsl's HTEX.

Prints, from one run on one local worker offering all cores of this host (or --slots), 1 core
per task (warm envs: built, unpacked and function servers started before timing; warm-up tasks
first), tasks/s of:
  * PonchoExecutor, regular and serverless mode, a no-op app and an app importing scikit-learn
    (``import sklearn.svm, sklearn.model_selection`` in its body, returning 0);
  * Work Queue alone (the floor): legacy ``work_queue`` manager, a Poncho task's files (cached
    poncho_run, run_function.py and the no-op env tarball; per-task fn.pkl; result.pkl back),
    command ``cp fn.pkl result.pkl``, 1 core per task;
  * Parsl's HighThroughputExecutor (max_workers_per_node: the slots; env pre-installed: this
    venv) with the same two apps;
then the ratios the issue sets targets for, and each mode against the floor and HTEX.

Each figure is the median of --rounds rounds; in every round each executor kind is loaded
afresh (one at a time) and its cases run one after another, the order rotating between rounds
so machine noise falls on all cases alike. PonchoExecutor uses function_exec_mode="regular"
and the per-app parsl_resource_specification={"exec_mode": "serverless"} for serverless cases.
Env store and worker cache are temporary (PARSL_PONCHO_WORKER_CACHE), unless --cache-dir.

With --slots below the host's cores, the forks and exits of serverless calls can run beside
the tasks instead of in their place, as on a worker with more cores than tasks.

Usage: python bench/serverless.py [--tasks 300] [--sklearn-tasks-regular 20] [--rounds 3]
                                  [--slots N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

#: Resource specification of a serverless task (the executor's default mode is regular).
SERVERLESS = {"exec_mode": "serverless"}


def _noop(parsl_resource_specification={}):  # noqa: B006 - Parsl's own convention
    return None


def _sklearn(parsl_resource_specification={}):  # noqa: B006
    import sklearn.model_selection  # noqa: F401
    import sklearn.svm  # noqa: F401

    return 0


APPS: dict[str, Any] = {}


def _setup() -> None:
    """Put the venv's bin first on PATH (HTEX's interchange and workers), define the apps."""
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    import parsl

    APPS["no-op"] = parsl.python_app(_noop)
    APPS["sklearn"] = parsl.python_app(_sklearn)


def _provider() -> Any:
    from parsl.providers import LocalProvider

    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)


def _config(executor: Any, run_dir: Path) -> Any:
    from parsl.config import Config

    return Config(executors=[executor], run_dir=str(run_dir), strategy="none")


def _rate(app: Any, n: int, kw: dict) -> float:
    """tasks/s of ``n`` calls submitted at once, first submit to last result."""
    t0 = time.perf_counter()
    futures = [app(**kw) for _ in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - t0)


# -- the executor kinds: each returns {case name: tasks/s} for one round -------------------


Cases = list[tuple[str, str, dict, int]]  # (case name, app name, app kwargs, tasks)


def _run_dfk(executor: Any, run_dir: Path, cases: Cases, warmup: int) -> dict[str, float]:
    """Load one DFK, warm every case up, then time each case once."""
    import parsl

    rates: dict[str, float] = {}
    with parsl.load(_config(executor, run_dir)):
        for _, app, kw, n in cases:  # a slow case (few tasks) needs fewer: one per core
            _rate(APPS[app], _warmup_for(n, warmup), kw)
        for name, app, kw, n in cases:
            rates[name] = _try(name, lambda: _rate(APPS[app], n, kw))  # noqa: B023
    return rates


def _warmup_for(tasks: int, warmup: int) -> int:
    return min(warmup, max(2, tasks // 5))


def _try(name: str, measure: Callable[[], float]) -> float:
    """The measurement, or NaN (with the error printed) if the case fails."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - one failed case must not sink the others
        print(f"  {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return float("nan")


def poncho_cases(args: argparse.Namespace) -> Cases:
    return [("poncho regular no-op", "no-op", {}, args.tasks),
            ("poncho serverless no-op", "no-op", {"parsl_resource_specification": SERVERLESS},
             args.tasks),
            ("poncho regular sklearn", "sklearn", {}, args.sklearn_tasks_regular),
            ("poncho serverless sklearn", "sklearn",
             {"parsl_resource_specification": SERVERLESS}, args.tasks)]


def run_poncho(args: argparse.Namespace, cache: Path, run_dir: Path, turn: int
               ) -> dict[str, float]:
    from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions

    executor = PonchoExecutor(
        provider=_provider(),
        function_exec_mode="regular",
        envs=EnvOptions(cache_dir=str(cache)),
        workers=WorkerOptions(server_idle_timeout=300, options=f"--cores {args.slots}"),
    )
    return _run_dfk(executor, run_dir, _rotate(poncho_cases(args), turn), args.warmup)


def run_htex(args: argparse.Namespace, run_dir: Path, turn: int) -> dict[str, float]:
    from parsl.executors import HighThroughputExecutor

    executor = HighThroughputExecutor(label="htex", max_workers_per_node=args.slots,
                                      provider=_provider())
    cases = [("htex no-op", "no-op", {}, args.tasks), ("htex sklearn", "sklearn", {}, args.tasks)]
    return _run_dfk(executor, run_dir, _rotate(cases, turn), args.warmup)


def run_wq_floor(args: argparse.Namespace, files: list[tuple[str, str]], work: Path,
                 cpu_ms: list[float] | None = None, queued: int | None = None
                 ) -> dict[str, float]:
    """Work Queue alone: a manager here, one local worker, Poncho's files, ``cp`` as command.

    With ``cpu_ms``, appends this process's CPU ms per task: Work Queue's manager and a
    Python loop that submits and waits, nothing else. ``queued`` caps the tasks in Work Queue
    at once (as Poncho's backlog does); by default all are submitted first."""
    from parsl_poncho.workqueue import load_work_queue

    wq = load_work_queue()
    q = wq.WorkQueue(port=0)
    workdir = Path(tempfile.mkdtemp(prefix="wq-worker-", dir=work))
    worker = subprocess.Popen(
        ["work_queue_worker", "--cores", str(args.slots), "-s", str(workdir),
         "localhost", str(q.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wq_batch(wq, q, files, work, _warmup_for(args.tasks, args.warmup), queued)

        def batch() -> float:
            rate, cpu = _wq_batch(wq, q, files, work, args.tasks, queued)
            if cpu_ms is not None:
                cpu_ms.append(cpu)
            return rate

        return {"work queue floor": _try("work queue floor", batch)}
    finally:
        worker.terminate()
        worker.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _wq_batch(wq: Any, q: Any, files: list[tuple[str, str]], work: Path, n: int,
              queued: int | None = None) -> tuple[float, float]:
    """(tasks/s, this process's CPU ms per task) for ``n`` ``cp`` tasks, at most ``queued``
    of them in Work Queue at once (None: all)."""
    out = Path(tempfile.mkdtemp(prefix="wq-out-", dir=work))
    t0, cpu0 = time.perf_counter(), time.process_time()
    submitted = finished = failed = 0
    while finished < n:
        while submitted < n and (queued is None or submitted - finished < queued):
            t = wq.Task("cp fn.pkl result.pkl")
            for local, remote in files:
                t.specify_input_file(local, remote, cache=remote != "fn.pkl")
            t.specify_output_file(str(out / f"result-{submitted}.pkl"), "result.pkl",
                                  cache=False)
            t.specify_cores(1)
            q.submit(t)
            submitted += 1
        t = q.wait(5)
        if t is not None:
            finished += 1
            failed += t.result != 0 or t.return_status != 0
    rate = n / (time.perf_counter() - t0)
    cpu_ms = (time.process_time() - cpu0) / n * 1e3
    shutil.rmtree(out, ignore_errors=True)
    if failed:
        raise RuntimeError(f"{failed} of {n} Work Queue tasks failed")
    return rate, cpu_ms


def _rotate(items: list, turn: int) -> list:
    k = turn % len(items) if items else 0
    return items[k:] + items[:k]


# -- preparation: build and unpack the envs, start the servers ------------------------------


def prepare(cache: Path, work: Path, worker_cache: Path) -> tuple[list[tuple[str, str]], int]:
    """Build both envs and run every case once.

    :returns: the WQ floor's input files (local, remote), and how many function servers were
        serving at the end (one per env if serverless works).
    """
    import cloudpickle
    import parsl

    from parsl_poncho import EnvOptions, EnvStore, PonchoExecutor, env_hash_of
    from parsl_poncho.shim import shim_file

    t0 = time.perf_counter()
    executor = PonchoExecutor(provider=_provider(), envs=EnvOptions(cache_dir=str(cache)))
    with parsl.load(_config(executor, work / "run-prepare")):
        futures = {(app, mode): APPS[app](parsl_resource_specification=spec)
                   for app in APPS for mode, spec in (("regular", {}), ("serverless", SERVERLESS))}
        for (app, mode), f in futures.items():
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 - report; the timed case will fail too
                print(f"prepare: {app} {mode}: {type(exc).__name__}: {exc}", file=sys.stderr)
        env_hash = env_hash_of(futures[("no-op", "regular")])
        servers = sum(1 for _ in worker_cache.rglob("*.server-v1/ready"))
    print(f"prepare: envs built, unpacked and first calls run in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    store = EnvStore(cache)
    env = store.lookup(env_hash or "")
    store.close()
    if env is None:
        raise SystemExit(f"prepare: the no-op env {env_hash!r} is not in the store {cache}")
    fn_pkl = work / "fn.pkl"
    fn_pkl.write_bytes(cloudpickle.dumps((_noop, (), {})))
    return [(str(shim_file("poncho_run")), "poncho_run"),
            (str(shim_file("run_function.py")), "run_function.py"),
            (str(env.tarball), env.tarball.name), (str(fn_pkl), "fn.pkl")], servers


# -- report ---------------------------------------------------------------------------------


RATIOS = [  # (numerator, denominator, target)
    ("poncho serverless sklearn", "poncho regular sklearn", 20.0),
    ("poncho serverless sklearn", "poncho serverless no-op", 0.8),
    ("poncho serverless no-op", "poncho regular no-op", 3.0),
    ("poncho regular no-op", "work queue floor", None),
    ("poncho serverless no-op", "work queue floor", None),
    ("poncho serverless sklearn", "work queue floor", None),
    ("poncho regular no-op", "htex no-op", None),
    ("poncho serverless no-op", "htex no-op", None),
    ("poncho regular sklearn", "htex sklearn", None),
    ("poncho serverless sklearn", "htex sklearn", None),
]


def _versions() -> str:
    import cloudpickle
    import parsl

    wq = subprocess.run(["work_queue_worker", "--version"], capture_output=True, text=True)
    wq_version = (wq.stdout or wq.stderr).splitlines()[0].replace("work_queue_worker version ", "")
    return (f"python {platform.python_version()}, parsl {parsl.__version__}, cloudpickle "
            f"{cloudpickle.__version__}, work_queue {wq_version}")


def print_report(rows: dict[str, list[float]], tasks: dict[str, int],
                 args: argparse.Namespace, servers: int, load: tuple[float, float]) -> None:
    med = {name: statistics.median(v) if v else float("nan") for name, v in rows.items()}
    print(f"\nserverless bench, {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{platform.node()}: one local worker, {os.cpu_count()} cores, {args.slots} task "
          f"slots, 1 core per task")
    print(f"{_versions()}; warm envs, <= {args.warmup} warm-up tasks per case, "
          f"median of {args.rounds} rounds")
    print(f"function servers up after prepare: {servers}; load average (1 min) at start "
          f"{load[0]:.2f}, at end {load[1]:.2f}")
    print(f"\n{'case':<28} {'tasks':>6} {'tasks/s':>9}   rounds")
    for name, values in rows.items():
        shown = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<28} {tasks[name]:>6} {med[name]:>9.1f}   {shown}")
    print(f"\n{'ratio':<54} {'value':>8} {'target':>8}")
    for num, den, target in RATIOS:
        value = med[num] / med[den] if med[den] else float("nan")
        goal = "" if target is None else f">= {target:g}x"
        verdict = "" if target is None else ("  met" if value >= target else "  NOT met")
        print(f"{num + ' / ' + den:<54} {value:>7.3g}x {goal:>8}{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300,
                        help="tasks per round of every case but regular sklearn (default 300)")
    parser.add_argument("--sklearn-tasks-regular", type=int, default=20,
                        help="tasks per round of regular sklearn, ~3 tasks/s (default 20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20,
                        help="warm-up tasks per case and load, at most a fifth of its tasks "
                             "(at least 2; default 20)")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1,
                        help="cores the worker offers, 1 per task (default: this host's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="env store to use and keep (default: a temporary one)")
    args = parser.parse_args(argv)
    if min(args.tasks, args.sklearn_tasks_regular, args.rounds, args.slots) < 1 or args.warmup < 0:
        parser.error("--tasks, --sklearn-tasks-regular, --rounds and --slots must be >= 1, "
                     "--warmup >= 0")
    _setup()
    work = Path(tempfile.mkdtemp(prefix="bench-serverless-"))
    worker_cache = work / "worker-cache"
    os.environ["PARSL_PONCHO_WORKER_CACHE"] = str(worker_cache)
    cache = args.cache_dir.absolute() if args.cache_dir else work / "cache"
    tasks = {name: n for name, _, _, n in poncho_cases(args)}
    tasks.update({"work queue floor": args.tasks, "htex no-op": args.tasks,
                  "htex sklearn": args.tasks})
    rows: dict[str, list[float]] = {name: [] for name in tasks}
    load_start = os.getloadavg()[0]
    try:
        files, servers = prepare(cache, work, worker_cache)
        kinds = [lambda r: run_poncho(args, cache, work / f"run-p{r}", r),
                 lambda r: run_wq_floor(args, files, work),
                 lambda r: run_htex(args, work / f"run-h{r}", r)]
        for r in range(args.rounds):
            for kind in _rotate(kinds, r):
                for name, rate in kind(r).items():
                    if rate == rate:  # a failed case (NaN) leaves no value for the median
                        rows[name].append(rate)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(rows, tasks, args, servers, (load_start, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
