"""Benchmark PonchoExecutor against Parsl's stock WorkQueueExecutor on the same local workers.

Prints one table:
  * throughput of N no-op tasks (warm env) -- PonchoExecutor vs stock WorkQueueExecutor without
    packing (ratio), the stock one also with a 1-core resource spec (without one, each stock
    task takes a whole worker);
  * first-task latency (app call -> result, ``--settle`` seconds after parsl.load so the worker
    is connected): PonchoExecutor with a cold cache (empty env store and worker unpack cache:
    analyse + build + verify + transfer + unpack) and a warm one, and the stock executor.

Usage: python bench/executor.py [--tasks 1000] [--repeat 3] [--settle 10]
Each executor gets one LocalProvider block: one work_queue_worker using all cores of this host.
The builder's package caches (rattler, uv) stay warm in the cold case: "cold" means this
spec was never built, not that nothing was ever downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

#: An ``ndcctools.work_queue`` alias of Debian's legacy module for the stock executor; Parsl
#: checks for it when parsl is first imported, so it goes on sys.path before that.
STOCK_ALIAS = Path(__file__).resolve().parent.parent / "tests" / "parsl_suite" / "stock_alias"


def _noop(parsl_resource_specification={}):  # noqa: B006 - Parsl's own convention
    return None


noop: Any = None


def _setup() -> None:
    """Make the stock executor importable, then import parsl and define the app."""
    global noop
    sys.path.insert(0, str(STOCK_ALIAS))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(STOCK_ALIAS), os.environ.get("PYTHONPATH")) if p)
    # stock workers run `python3` from PATH and need parsl there
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    import parsl

    noop = parsl.python_app(_noop)


def _provider() -> Any:
    from parsl.providers import LocalProvider

    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)


def poncho_executor(cache: Path) -> Any:
    from parsl_poncho import EnvOptions, PonchoExecutor

    return PonchoExecutor(provider=_provider(), envs=EnvOptions(cache_dir=str(cache)))


def stock_executor(_cache: Path) -> Any:
    from parsl.executors import WorkQueueExecutor

    return WorkQueueExecutor(port=0, coprocess=False, provider=_provider())


def run(make: Callable[[Path], Any], cache: Path, run_dir: Path, *, tasks: int,
        spec: dict | None, settle: float = 0.0) -> tuple[float, float]:
    """(first-task latency, throughput of ``tasks`` no-ops after it) for one fresh DFK.

    With ``settle`` the first task is submitted that many seconds after parsl.load, once the
    worker is connected, so worker start-up is not part of the latency.
    """
    import parsl
    from parsl.config import Config

    config = Config(executors=[make(cache)], run_dir=str(run_dir), strategy="none")
    kw = {} if spec is None else {"parsl_resource_specification": spec}
    with parsl.load(config):
        time.sleep(settle)
        t0 = time.perf_counter()
        noop(**kw).result()
        latency = time.perf_counter() - t0
        throughput = float("nan")
        if tasks:
            t0 = time.perf_counter()
            futures = [noop(**kw) for _ in range(tasks)]
            for f in futures:
                f.result()
            throughput = tasks / (time.perf_counter() - t0)
    return latency, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds between parsl.load and the first task (worker start-up)")
    args = parser.parse_args(argv)
    _setup()
    work = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    worker_cache = work / "worker-cache"
    os.environ["PARSL_PONCHO_WORKER_CACHE"] = str(worker_cache)
    one_core = {"cores": 1, "memory": 500, "disk": 500}
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in (
        "poncho cold", "poncho warm", "stock", "stock 1-core spec")}
    try:
        for i in range(args.repeat):
            cache = work / f"cache-{i}"  # a new store: this spec was never built
            shutil.rmtree(worker_cache, ignore_errors=True)
            n = args.tasks if i == 0 else 0
            common = {"settle": args.settle}
            rows["poncho cold"].append(run(poncho_executor, cache, work / f"r{i}a", tasks=0,
                                           spec=None, **common))
            rows["poncho warm"].append(run(poncho_executor, cache, work / f"r{i}b", tasks=n,
                                           spec=None, **common))
            rows["stock"].append(run(stock_executor, cache, work / f"r{i}c", tasks=n,
                                     spec=None, **common))
            rows["stock 1-core spec"].append(run(stock_executor, cache, work / f"r{i}d",
                                                 tasks=n, spec=one_core, **common))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print_table(rows, args)
    return 0


def _print_table(rows: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    base = rows["stock"][0][1]
    print(f"\nPonchoExecutor vs Parsl WorkQueueExecutor (pack=False), one local worker with "
          f"{os.cpu_count()} cores; {args.tasks} no-op tasks; first task submitted "
          f"{args.settle:g} s after parsl.load (worker up); latency median of {args.repeat}")
    print(f"{'executor':<20} {'first task s (median)':>22} {'tasks/s':>10} {'vs stock':>9}")
    for name, values in rows.items():
        latency = statistics.median(v[0] for v in values)
        tput = values[0][1]
        shown = "-" if tput != tput else f"{tput:.1f}"
        ratio = "-" if tput != tput else f"{tput / base:.2f}x"
        print(f"{name:<20} {latency:>22.2f} {shown:>10} {ratio:>9}")


if __name__ == "__main__":
    sys.exit(main())
