"""Benchmark layered environments (issue 13): the edit-and-rerun loop of examples/sklearn_sweep.

Copies examples/sklearn_sweep/ (sweep.py, model_helpers.py) and examples/examples_common.py into
a temporary workflow directory, then runs ``sweep.py`` there as a user does, each time a new
process with the same env cache and worker cache:
  1. prepare: builds the scikit-learn base and the code layer (cold; reported, not a target);
  2. warm: nothing to build;
  3. after an edit: one comment line added to model_helpers.py.
Prints a table: each run's wall time, base builds and code layers packed in it, the ratio
edit/warm (target <= 1.2x; before layers 2.4x) and the code layer's pack time (target < 0.5 s;
read from the cache's code/<key>.json records). --rounds repeats 2-3 and reports medians.

Usage: python bench/layers.py [--rounds 3] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOLVE = re.compile(r"\[1/\d+\] solve: \d+ spec")


def run_sweep(flow: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """Run sweep.py once; (seconds, base builds in its log, its stdout)."""
    log = flow / "parsl.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(log)], cwd=flow, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep.py failed:\n{proc.stderr[-4000:]}")
    builds = len(SOLVE.findall(log.read_text())) if log.exists() else -1
    return seconds, builds, proc.stdout


#: Runs sweep.main() with INFO logging to a file (where the store reports its build phases).
_DRIVER = """
import logging, os, runpy, sys
sys.path.insert(0, os.path.abspath("sweep"))
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
sys.argv = ["sweep.py"]
runpy.run_path("sweep/sweep.py", run_name="__main__")
"""


def code_records(cache: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (cache / "code").glob("*.json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, help="env cache (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    try:
        return _bench(work, args.cache_dir or work / "cache", args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, cache: Path, rounds: int) -> int:
    flow = work / "flow"
    (flow / "sweep").mkdir(parents=True)
    for name in ("sweep.py", "model_helpers.py"):
        shutil.copy(REPO / "examples" / "sklearn_sweep" / name, flow / "sweep" / name)
    shutil.copy(REPO / "examples" / "examples_common.py", flow / "examples_common.py")
    env = {**os.environ, "PARSL_PONCHO_CACHE": str(cache),
           "PARSL_PONCHO_WORKER_CACHE": str(work / "wcache")}
    helper = flow / "sweep" / "model_helpers.py"
    cold, cold_builds, _ = run_sweep(flow, env)
    rows: list[tuple[str, float, int, int]] = [("prepare (cold)", cold, cold_builds,
                                                len(code_records(cache)))]
    warm_times, edit_times, packs = [], [], []
    for i in range(rounds):
        before = code_records(cache)
        seconds, builds, _ = run_sweep(flow, env)
        warm_times.append(seconds)
        rows.append((f"warm #{i + 1}", seconds, builds, len(code_records(cache)) - len(before)))
        with open(helper, "a") as f:
            f.write(f"# edit {i + 1} at {time.time()}\n")  # one line: a new code layer
        before = code_records(cache)
        seconds, builds, _ = run_sweep(flow, env)
        edit_times.append(seconds)
        new = {k: v for k, v in code_records(cache).items() if k not in before}
        packs += [float(v["built_seconds"]) for v in new.values()]
        rows.append((f"after edit #{i + 1}", seconds, builds, len(new)))
    warm, edit = statistics.median(warm_times), statistics.median(edit_times)
    pack = max(packs) if packs else float("nan")
    print(f"{'run':<18} {'seconds':>8} {'base builds':>12} {'code layers':>12}")
    for name, seconds, builds, layers in rows:
        print(f"{name:<18} {seconds:>8.2f} {builds:>12} {layers:>12}")
    print(f"\nwarm (median)           {warm:8.2f} s")
    print(f"after edit (median)     {edit:8.2f} s")
    ratio = edit / warm
    print(f"ratio edit / warm       {ratio:8.2f} x   (target <= 1.2x; 2.4x before layers)")
    print(f"code layer pack (max)   {pack:8.4f} s   (target < 0.5 s)")
    ok = ratio <= 1.2 and pack < 0.5 and all(r[2] == 0 for r in rows[1:])
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
