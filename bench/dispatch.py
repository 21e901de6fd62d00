"""Where the submit host's CPU goes per task: the submitting process, the Work Queue manager
process and the local worker, for warm serverless no-op tasks (issue 21's dispatch budget).

Runs one Parsl workflow with PonchoExecutor(function_exec_mode="serverless") on one local
worker, warms it up (env built, unpacked, function server started), then submits --tasks no-op
tasks at once and reads each process's user+system CPU from /proc before and after. Prints a
table of CPU per task by process (median of --rounds rounds) and the tasks/s of the same runs.
With --profile, the submitting process runs under cProfile during the last round and the
functions with the most cumulative time are printed.

Usage: python bench/dispatch.py [--tasks 1000] [--rounds 3] [--slots 2] [--profile]
(bench/scale.py part (c) runs the same measurement beside Work Queue's floor and HTEX.)
"""

from __future__ import annotations

import os
import sys

# bench/multiprocessing.py is named like the standard library's package: keep this directory
# off sys.path, or parsl's ``import multiprocessing`` would import it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import parsl  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.providers import LocalProvider  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@parsl.python_app
def noop():
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def worker_pids(port: int) -> list[int]:
    """The work_queue_worker processes connected to ``port`` (by their command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"work_queue_worker") and str(port).encode() in argv:
            found.append(int(entry))
    # A worker forks a child per task with the same command line; keep the long-lived ones.
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def one_round(executor: PonchoExecutor, tasks: int, profile: cProfile.Profile | None
              ) -> dict[str, float]:
    manager = executor._manager.process.pid
    workers = worker_pids(executor._manager.port)
    pids = {"submitting": os.getpid(), "manager": manager}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before["worker"] = sum(cpu_seconds(pid) for pid in workers)
    start = time.perf_counter()
    if profile is not None:
        profile.enable()
    futures = [noop() for _ in range(tasks)]
    for future in futures:
        future.result()
    if profile is not None:
        profile.disable()
    wall = time.perf_counter() - start
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    after["worker"] = sum(cpu_seconds(pid) for pid in workers)
    per_task = {name: (after[name] - before[name]) / tasks * 1e3 for name in before}
    per_task["tasks/s"] = tasks / wall
    return per_task


NAMES = ("submitting", "manager", "worker")


def measure(root: Path, tasks: int, rounds: int, slots: int,
            profile: cProfile.Profile | None = None) -> tuple[dict[str, float], str | None]:
    """Medians over ``rounds`` of CPU ms per task by process and tasks/s, and the env hash
    the no-op ran in (its tarball is what Work Queue's floor ships)."""
    from parsl_poncho import env_hash_of

    os.environ["PARSL_PONCHO_WORKER_CACHE"] = str(root / "wcache")
    executor = PonchoExecutor(label="poncho", function_exec_mode="serverless",
                              envs=EnvOptions(cache_dir=str(root / "cache")),
                              workers=WorkerOptions(options=f"--cores {slots}"),
                              provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    config = Config(executors=[executor], run_dir=str(root / "runinfo"), strategy="none")
    rows = []
    with parsl.load(config):
        warm = [noop() for _ in range(50)]  # env built, server started
        for future in warm:
            future.result()
        for index in range(rounds):
            rows.append(one_round(executor, tasks, profile if index == rounds - 1 else None))
    medians = {name: statistics.median(r[name] for r in rows) for name in (*NAMES, "tasks/s")}
    return medians, env_hash_of(warm[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    profile = cProfile.Profile() if args.profile else None
    root = Path(tempfile.mkdtemp(prefix="pp-dispatch-"))
    try:
        medians, _ = measure(root, args.tasks, args.rounds, args.slots, profile)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    submit_host = medians["submitting"] + medians["manager"]
    print(f"warm serverless no-op tasks, {args.tasks} per round, median of {args.rounds} "
          f"rounds, one local worker with {args.slots} slots")
    print(f"{'process':<34}{'CPU ms/task':>12}")
    for name in NAMES:
        print(f"{name:<34}{medians[name]:>12.3f}")
    print(f"{'submit host (submitting+manager)':<34}{submit_host:>12.3f}   target <= 0.5 "
          f"(ratio {submit_host / 0.5:.1f}x)")
    print(f"tasks/s {medians['tasks/s']:.0f}; one submit-host core would sustain "
          f"{1e3 / submit_host:.0f} tasks/s at this CPU per task")
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
        print("\nsubmitting process, last round, by cumulative time:")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
