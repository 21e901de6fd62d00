"""`parsl-poncho channel seed [DIR]`: make a local conda channel from the running CPython."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``channel seed`` to the umbrella command's subparsers."""
    channel = subparsers.add_parser("channel", help="manage the local offline conda channel")
    sub = channel.add_subparsers(dest="channel_command", metavar="ACTION")
    seed = sub.add_parser(
        "seed",
        help="put this Python (and pip, setuptools) into a local conda channel",
        description="Package the running CPython, pip and setuptools as conda packages in DIR "
        "(default: the cache's channel directory) so envs build without any conda channel. "
        "Cheap when DIR is already seeded from this interpreter.",
    )
    seed.add_argument("dir", nargs="?", type=Path, help="channel directory")
    seed.add_argument("--force", action="store_true", help="rebuild the packages")
    seed.add_argument("--json", action="store_true", help="print a JSON summary")
    seed.set_defaults(func=seed_command)
    channel.set_defaults(func=lambda args: (channel.print_help(), 2)[1])


def seed_command(args: argparse.Namespace) -> int:
    """Seed the channel and print where it is (and how to use it)."""
    from parsl_poncho.build import seed_channel

    start = time.perf_counter()
    path = seed_channel(args.dir, force=args.force)
    packages = sorted(
        str(p.relative_to(path)) for p in [*path.glob("*/*.conda"), *path.glob("*/*.tar.bz2")]
    )
    summary = {"channel": str(path), "url": path.as_uri(), "packages": packages,
               "seconds": round(time.perf_counter() - start, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(path)
        print(f"seeded {len(packages)} package(s) in {summary['seconds']} s; build with "
              f"poncho_package_create --channel {path} --override-channels SPEC OUT.tar.gz",
              file=sys.stderr)
    return 0
