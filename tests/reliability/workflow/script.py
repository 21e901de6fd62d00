"""The submit process of the reliability tests: a Parsl script on PonchoExecutor.

Three apps with three distinct environments (plain; a local helper module ``helper_b``; a local
helper module ``helper_c``: one shared base, two code layers), ``--tasks`` calls spread over
them round robin. Workers are either
started by Parsl's LocalProvider (``--workers K``) or by the caller (``--workers 0``: the script
prints ``PORT <n>`` once the manager listens).

Prints, flushed, one line per event: ``PORT n``, ``BUILD <hash>`` (the store's builder ran),
``RESULT i value`` (with ``--print-results``), and at the end ``SUMMARY {json}`` with tasks,
results right/wrong/failed, tasks per second, peak RSS of this process, builds and env hashes.

Usage: script.py --cache DIR --channel DIR --pkg-cache DIR --run-dir DIR --tasks N
                 [--workers K] [--sleep S] [--print-results] [--port P] [--max-retries R]
                 [--marker-dir DIR]  (each task attempt creates DIR/<i>-<pid> when it starts)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import helper_b
import helper_c
import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

from parsl_poncho import PonchoExecutor, WorkerOptions, env_hash_of
from parsl_poncho.build import BuildOptions, build_env
from parsl_poncho.store import EnvStore


@parsl.python_app
def plain(i, sleep=0.0, mark=None):
    import os
    import time

    if mark:  # tell the test this attempt started (a retried task leaves two marks)
        open(os.path.join(mark, f"{i}-{os.getpid()}"), "w").close()
    if sleep:
        time.sleep(sleep)
    return i * 3 + 1


@parsl.python_app
def with_b(i, sleep=0.0, mark=None):
    import os
    import time

    if mark:  # tell the test this attempt started (a retried task leaves two marks)
        open(os.path.join(mark, f"{i}-{os.getpid()}"), "w").close()
    if sleep:
        time.sleep(sleep)
    return helper_b.transform(i)


@parsl.python_app
def with_c(i, sleep=0.0, mark=None):
    import os
    import time

    if mark:  # tell the test this attempt started (a retried task leaves two marks)
        open(os.path.join(mark, f"{i}-{os.getpid()}"), "w").close()
    if sleep:
        time.sleep(sleep)
    return helper_c.transform(i)


APPS = (plain, with_b, with_c)


def expected(i: int) -> int:
    """What task ``i`` must return."""
    kind = i % 3
    if kind == 0:
        return i * 3 + 1
    if kind == 1:
        return helper_b.transform(i)
    return helper_c.transform(i)


def counting_builder(spec, output, *, options=None, progress=None):
    """The real builder, announcing each build on stdout (the caller counts rebuilds)."""
    print(f"BUILD {output.name[len('env-'):-len('.tar.gz')]}", flush=True)
    return build_env(spec, output, options=options, progress=progress)


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("--cache", "--channel", "--pkg-cache", "--run-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--print-results", action="store_true")
    parser.add_argument("--marker-dir", default=None)
    args = parser.parse_args()

    options = BuildOptions(channels=(args.channel,), cache_dir=Path(args.pkg_cache))
    store = EnvStore(Path(args.cache), build_options=options, builder=counting_builder)
    provider = LocalProvider(init_blocks=args.workers, min_blocks=0,
                             max_blocks=max(args.workers, 0))
    executor = PonchoExecutor(
        store=store,
        provider=provider,
        port=args.port,
        max_retries=args.max_retries,
        workers=WorkerOptions(options="--cores 1 --timeout 120"),
    )
    config = Config(executors=[executor], run_dir=args.run_dir, strategy="none")
    right = wrong = failed = 0
    hashes: set[str] = set()
    with parsl.load(config):
        print(f"PORT {executor._manager.port}", flush=True)
        started = time.monotonic()
        futures = [APPS[i % 3](i, sleep=args.sleep, mark=args.marker_dir)
                   for i in range(args.tasks)]
        submitted = time.monotonic() - started
        for i, future in enumerate(futures):
            try:
                value = future.result()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failed += 1
                print(f"FAILED {i} {type(exc).__name__}: {exc}", flush=True)
                continue
            hashes.add(env_hash_of(future) or "?")
            if value == expected(i):
                right += 1
            else:
                wrong += 1
            if args.print_results:
                print(f"RESULT {i} {value}", flush=True)
        elapsed = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = {
        "tasks": args.tasks, "right": right, "wrong": wrong, "failed": failed,
        "lost": args.tasks - right - wrong - failed, "seconds": round(elapsed, 2),
        "submit_seconds": round(submitted, 2),
        "tasks_per_second": round(args.tasks / elapsed, 1) if elapsed else None,
        "peak_rss_mib": round(peak_kib / 1024, 1), "envs": sorted(hashes),
        "python": sys.executable, "pid": os.getpid(),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0 if right == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
