"""What the kernel charges for one fork and its exit, by what the forking process has mapped.

A serverless call is one fork of the preloaded server and one exit, so this is the part of a
call's CPU that grows with the preload, whatever the server does in Python. Each row runs in a
fresh interpreter (imports cannot be undone), forks --forks children that _exit at once, and
prints the medians over --batches batches of the forking side's CPU per fork, the child's CPU
(its exit, mostly tearing down the address space) and their sum:

    bare                python with cloudpickle, call_process and huge_pages: what a no-op app's
                        server forks
    +N mappings, read   plus N private 8 KiB file mappings only read (no anonymous pages)
    +N mappings, written  the same, each written once (an anonymous page each, as the data
                        and RELRO segments of a loaded extension module have)
    preload             --preload's modules imported
    preload, huge pages the same, then laid out on huge pages as the function server does

Usage: python bench/fork_cost.py [--preload sklearn.svm,sklearn.model_selection]
       [--mappings 1000] [--forks 60] [--batches 5]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER_SHIM = Path(__file__).resolve().parents[1] / "worker_shim"
ROWS = ("bare", "+N mappings, read", "+N mappings, written", "preload", "preload, huge pages")


def count_mappings() -> tuple[int, int]:
    """(mappings, MiB of anonymous memory) of this process."""
    with open("/proc/self/maps") as f:
        mappings = sum(1 for _ in f)
    with open("/proc/self/smaps_rollup") as f:
        anon = next(int(line.split()[1]) for line in f if line.startswith("Anonymous:"))
    return mappings, anon // 1024


def time_forks(forks: int) -> tuple[float, float]:
    """CPU ms per fork on this side, and per child (its exit), over ``forks`` forks."""
    before, children = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    after, children_after = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = after.user + after.system - before.user - before.system
    theirs = (children_after.ru_utime + children_after.ru_stime
              - children.ru_utime - children.ru_stime)
    return 1000 * ours / forks, 1000 * theirs / forks


def measure_row(row: str, args: argparse.Namespace) -> dict:
    """Set this process up as ``row`` says, then time its forks."""
    import gc

    import cloudpickle  # noqa: F401 - every server has it

    sys.path.insert(0, str(WORKER_SHIM))
    import call_process  # noqa: F401 - every server has it, and what it imports
    import huge_pages

    keep: list = []
    if row.startswith("+N"):
        with tempfile.TemporaryFile() as f:
            f.write(b"x" * 8192)
            f.flush()
            for _ in range(args.mappings):
                area = mmap.mmap(f.fileno(), 8192, flags=mmap.MAP_PRIVATE,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
                if row.endswith("written"):
                    area[0] = 1
                else:
                    area[0]  # noqa: B018 - read: the page is mapped, no private copy
                keep.append(area)
    elif row.startswith("preload"):
        pins = huge_pages.reserve_arenas() if row.endswith("pages") else []
        for name in args.preload.split(","):
            __import__(name)
        del pins
    gc.collect()
    gc.freeze()
    if row.endswith("huge pages"):
        huge_pages.collapse_to_huge_pages()
    mappings, anon = count_mappings()
    time_forks(10)  # warm-up
    batches = [time_forks(args.forks) for _ in range(args.batches)]
    fork = statistics.median(b[0] for b in batches)
    child = statistics.median(b[1] for b in batches)
    return {"row": row, "mappings": mappings, "anon": anon, "fork": fork, "child": child}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preload", default="sklearn.svm,sklearn.model_selection")
    parser.add_argument("--mappings", type=int, default=1000)
    parser.add_argument("--forks", type=int, default=60)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure_row(args.row, args)))
        return 0
    results = []
    for row in ROWS:
        out = subprocess.run([sys.executable, __file__, "--row", row, "--preload", args.preload,
                              "--mappings", str(args.mappings), "--forks", str(args.forks),
                              "--batches", str(args.batches)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"row {row!r} failed:\n{out.stderr}", file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout))
    bare = results[0]["fork"] + results[0]["child"]
    print(f"fork + exit CPU, median of {args.batches} x {args.forks} forks; "
          f"{os.cpu_count()} CPUs; preload: {args.preload}")
    print(f"{'process':<24}{'mappings':>9}{'anon MiB':>9}{'fork ms':>9}{'exit ms':>9}"
          f"{'sum ms':>9}{'- bare':>9}")
    for r in results:
        total = r["fork"] + r["child"]
        name = r["row"].replace("+N", f"+{args.mappings}")
        print(f"{name:<24}{r['mappings']:>9}{r['anon']:>9}{r['fork']:>9.2f}{r['child']:>9.2f}"
              f"{total:>9.2f}{total - bare:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
