"""Benchmark the serverless client: a warm no-op call through poncho_serve and a function server
versus regular mode and versus floors.

Usage: python bench/serve_client.py [--repeat N] [--preload MOD,...] [--cpu]

Builds a throwaway environment directory whose bin/python is this interpreter (it must have
cloudpickle), a task sandbox with the worker files and fn.pkl (a no-op function), warms the
server once, then times, interleaved round by round (so background load falls on all
rows alike), the median wall time of:

    true                         the cost of starting any process from here (the floor)
    poncho_run -- true           the shim alone: activation, exec
    poncho_run -- poncho_serve   a serverless call (the server forks, runs run_function.main)
    poncho_run -- python run_function.py   regular mode

With --preload the server imports those modules first and the function imports them too, which
shows what preloading saves (e.g. --preload numpy).

With --cpu it then makes --repeat more serverless calls and prints the CPU time each call cost,
by process (from /proc: the server's loop, the forker's forks, the calls' processes including
their exit, this script's children: the shim and the client; and the whole machine), with the
server's log line on huge pages. On a busy worker, CPU per call rather than latency decides
throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cloudpickle  # noqa: E402

from parsl_poncho.shim import (  # noqa: E402
    SERVER_FILES,
    poncho_run_path,
    poncho_serve_path,
    shim_file,
)

SH = shutil.which("dash") or "/bin/sh"


def make_node(root: Path, modules: list[str]) -> tuple[Path, Path]:
    """An env dir (python = this interpreter) and a sandbox with the worker files and fn.pkl."""
    env = root / "env-bench"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    if sys.prefix != sys.base_prefix:
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", env / "pyvenv.cfg")
        (env / "lib").symlink_to(Path(sys.prefix) / "lib")
    (env / ".poncho-ready").write_text("bench\n")
    sandbox = root / "sandbox"
    sandbox.mkdir()
    for src in (*map(shim_file, SERVER_FILES), poncho_serve_path()):
        shutil.copy(src, sandbox / src.name)

    def task() -> None:
        import importlib

        for name in modules:
            importlib.import_module(name)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    (sandbox / "fn.pkl").write_bytes(cloudpickle.dumps((task, (), {})))
    return env, sandbox


def time_once(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or b"regular mode" in proc.stderr:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr.decode()}")
    return elapsed


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(own utime + stime, waited-for children's) of ``pid`` in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
    return fields[0] + fields[1], fields[2] + fields[3]


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal


def cpu_per_call(argv: list[str], sandbox: Path, server_dir: Path, calls: int) -> None:
    server = int((server_dir / "pid").read_text())
    forker = int(Path(f"/proc/{server}/task/{server}/children").read_text().split()[0])
    before = (cpu_ticks(server), cpu_ticks(forker), os.times(), machine_busy_ticks())
    for _ in range(calls):
        time_once(argv, sandbox)
    after = (cpu_ticks(server), cpu_ticks(forker), os.times(), machine_busy_ticks())
    ms = 1000 / os.sysconf("SC_CLK_TCK") / calls
    client = (after[2].children_user + after[2].children_system
              - before[2].children_user - before[2].children_system) * 1000 / calls
    rows = [("server loop", (after[0][0] - before[0][0]) * ms),
            ("forker (forks)", (after[1][0] - before[1][0]) * ms),
            ("calls' processes (with exit)", (after[1][1] - before[1][1]) * ms),
            ("shim + client (this script's children)", client),
            ("whole machine", (after[3] - before[3]) * ms)]
    print(f"CPU per serverless call, mean of {calls}:")
    for name, value in rows:
        print(f"  {name:<40} {value:8.2f} ms")
    huge = [line for line in (server_dir / "log").read_text().splitlines() if "huge pages" in line]
    print(f"  server log: {huge[-1].split('] ', 1)[1] if huge else 'no huge-page line'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--preload", default="")
    parser.add_argument("--cpu", action="store_true", help="also print CPU time per call")
    args = parser.parse_args(argv)
    modules = [m for m in args.preload.split(",") if m]
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env, sandbox = make_node(root, modules)
    shim = [SH, str(poncho_run_path()), "-e", str(env), "--"]
    serve = ["sh", "poncho_serve", "--idle", "60", "--preload", args.preload, "--",
             "fn.pkl", "result.pkl"]
    cases = {
        "true (floor)": ["true"],
        "poncho_run -- true": [*shim, "true"],
        "poncho_run -- sh poncho_serve": [*shim, *serve],
        "poncho_run -- python run_function.py": [*shim, "python", "run_function.py", "fn.pkl",
                                                 "result.pkl"],
    }
    try:
        for case in cases.values():
            time_once(case, sandbox)  # warm: starts the server, fills the page cache
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, case in cases.items():
                times[name].append(time_once(case, sandbox))
        medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
        print(f"warm call, median of {args.repeat} (preload: {args.preload or 'none'}):")
        for name, ms in medians.items():
            print(f"  {name:<40} {ms:8.2f} ms")
        serve_ms = medians["poncho_run -- sh poncho_serve"]
        regular_ms = medians["poncho_run -- python run_function.py"]
        client_ms = serve_ms - medians["poncho_run -- true"]
        print(f"  serverless is {regular_ms / serve_ms:.1f}x faster than regular mode; the client "
              f"plus the forked call cost {client_ms:.2f} ms over the shim alone")
        if args.cpu:
            cpu_per_call(cases["poncho_run -- sh poncho_serve"], sandbox,
                         Path(f"{env}.server-v1"), args.repeat)
    finally:
        pid_file = Path(f"{env}.server-v1") / "pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            time.sleep(0.3)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
