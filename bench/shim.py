"""Benchmark the worker shim: first-task and warm per-task cost against their floors and Debian's
python_package_run.

Usage: python bench/shim.py [--tarball ENV.tar.gz] [--repeat N] [--warm-repeat M]
                            [--pip REQ ...] [--channel DIR]

Without --tarball, one env (python + pip + the --pip packages) is built with build_env from a
seeded channel. All rows run `python -c pass` inside that env, in the same process run:

Cases take turns within each round (interleaved) so that load from other processes falls on
all of them alike; each row is the median over the rounds.

- first task (fresh node cache each run, median of N):
    floor                    `tar xzf ENV -C fresh_dir` (no checks, no relocation, no python)
    poncho_run               list + check members, extract, conda-unpack, activate, run python
    poncho_run -s SHA256     the same plus the checksum
    python_package_run -e    Debian coop-computing-tools: untar to a temp dir, conda-unpack,
                             source bin/activate, run, delete (what Parsl's pack=True runs)
- warm task (environment already unpacked on the node, median of M):
    floor                    `<unpacked env>/bin/python -c pass` with no shim
    poncho_run               ready check, in-use lock, activation, exec
    python_package_run -e    unpacks again for every task (it has no node cache)
    python_package_run -u    with a fixed --unpack-to dir, which it reuses (flock + activate)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsl_poncho.shim import poncho_run_path  # noqa: E402

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON_PACKAGE_RUN = "/usr/bin/python_package_run"
SH = "/bin/sh"
TASK = ("python", "-c", "pass")


def build_tarball(root: Path, pip: list[str], channel: Path | None) -> Path:
    """Build python + pip + ``pip`` into root/env-bench.tar.gz with the project's builder."""
    from parsl_poncho.build import BuildOptions, build_env, seed_channel
    from parsl_poncho.spec import Spec

    channel = seed_channel(channel) if channel else seed_channel()
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=tuple(pip))
    options = BuildOptions(channels=(str(channel),), cache_dir=root / "build-cache",
                           workdir=root / "work")
    out = root / "env-bench.tar.gz"
    build_env(spec, out, options=options, progress=lambda _: None)
    shutil.rmtree(root / "work", ignore_errors=True)
    return out


def run_timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return elapsed


def fresh_dir_run(root: Path, run) -> float:
    """Time ``run(fresh_dir)`` with a new empty directory (removed afterwards, untimed)."""
    fresh = Path(tempfile.mkdtemp(dir=root))
    try:
        return run(fresh)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


Row = tuple[float, float]  # (median, minimum) seconds


def interleaved_medians(n: int, cases: dict[str, object]) -> dict[str, Row]:
    """Median and minimum of n runs per case, the cases taking turns so that load from other
    processes on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(n):
        for name, run in cases.items():
            times[name].append(run())
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def shim_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, PARSL_PONCHO_WORKER_CACHE=str(cache))
    env.pop("PARSL_PONCHO_WORKER_CACHE_MAX", None)
    return env


def first_task_rows(tarball: Path, root: Path, n: int) -> dict[str, Row]:
    shim = str(poncho_run_path())
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    cases = {
        "tar xzf (floor)": lambda: fresh_dir_run(
            root, lambda d: run_timed(["tar", "xzf", str(tarball), "-C", str(d)])),
        "poncho_run": lambda: fresh_dir_run(
            root, lambda d: run_timed([SH, shim, "-e", str(tarball), *TASK], shim_env(d))),
        "poncho_run -s SHA256": lambda: fresh_dir_run(
            root, lambda d: run_timed([SH, shim, "-s", digest, "-e", str(tarball), *TASK],
                                      shim_env(d))),
    }
    if os.access(PYTHON_PACKAGE_RUN, os.X_OK):
        cases["python_package_run -e"] = lambda: fresh_dir_run(
            root, lambda d: run_timed([PYTHON_PACKAGE_RUN, "-e", str(tarball), "--", *TASK],
                                      cwd=d))
    return interleaved_medians(n, cases)


def warm_task_rows(tarball: Path, root: Path, n: int, n_ppr: int) -> dict[str, Row]:
    shim = str(poncho_run_path())
    cache = root / "warm-cache"
    env = shim_env(cache)
    run_timed([SH, shim, "-e", str(tarball), *TASK], env)  # unpack once
    prefix = cache / tarball.name.removesuffix(".tar.gz")
    direct = [str(prefix / "bin" / "python"), *TASK[1:]]
    cases = {
        "python, no shim (floor)": lambda: run_timed(direct),
        "poncho_run": lambda: run_timed([SH, shim, "-e", str(tarball), *TASK], env),
    }
    if os.access(PYTHON_PACKAGE_RUN, os.X_OK):
        unpack_to = root / "ppr-unpacked"
        ppr_u = [PYTHON_PACKAGE_RUN, "-u", str(unpack_to), "-e", str(tarball), "--", *TASK]
        run_timed(ppr_u, cwd=root)
        cases["python_package_run -u DIR"] = lambda: run_timed(ppr_u, cwd=root)
    rows = interleaved_medians(n, cases)
    if os.access(PYTHON_PACKAGE_RUN, os.X_OK):
        ppr_e = [PYTHON_PACKAGE_RUN, "-e", str(tarball), "--", *TASK]
        rows["python_package_run -e"] = interleaved_medians(
            n_ppr, {"ppr": lambda: run_timed(ppr_e, cwd=root)})["ppr"]
    return rows


def print_table(title: str, rows: dict[str, Row], floor: str, ppr: str) -> None:
    """Medians, their ratios to the floor and to python_package_run; minima for reference."""
    base = rows[floor][0]
    other = rows[ppr][0] if ppr in rows else None
    print(f"\n{title}")
    print(f"{'case':<28}{'median s':>10}{'vs floor':>10}{'+ms vs floor':>14}"
          f"{'vs ' + ppr:>28}{'min s':>9}")
    for name, (seconds, fastest) in rows.items():
        vs_ppr = f"{seconds / other:.2f}x" if other else "n/a"
        print(f"{name:<28}{seconds:>10.3f}{seconds / base:>9.2f}x"
              f"{(seconds - base) * 1000:>14.1f}{vs_ppr:>28}{fastest:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="a conda-pack env tarball (default: build)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per first-task row")
    parser.add_argument("--warm-repeat", type=int, default=30, help="runs per warm row")
    parser.add_argument("--pip", nargs="*", default=["cloudpickle==3.1.2"])
    parser.add_argument("--channel", type=Path, help="an already seeded channel")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pp-bench-shim-"))
    try:
        if args.tarball:
            tarball = root / "env-bench.tar.gz"
            shutil.copy2(args.tarball, tarball)
        else:
            tarball = build_tarball(root, args.pip, args.channel)
        size_mb = tarball.stat().st_size / 1e6
        print(f"tarball {tarball.name}: {size_mb:.1f} MB; task: {' '.join(TASK)}; "
              f"shell {os.path.realpath(SH)}; {os.cpu_count()} CPUs")
        if not os.access(PYTHON_PACKAGE_RUN, os.X_OK):
            print(f"({PYTHON_PACKAGE_RUN} missing: apt-get install coop-computing-tools)")
        first = first_task_rows(tarball, root, args.repeat)
        print_table(f"first task on a node (median of {args.repeat})", first,
                    "tar xzf (floor)", "python_package_run -e")
        warm = warm_task_rows(tarball, root, args.warm_repeat, args.repeat)
        print_table(f"warm task, env already on the node (median of {args.warm_repeat}; "
                    f"python_package_run -e: {args.repeat})", warm,
                    "python, no shim (floor)", "python_package_run -e")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
