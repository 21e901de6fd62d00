"""`parsl-poncho`: the umbrella command (channel seed, cache ls/rm/prune)."""

from __future__ import annotations

import argparse
import importlib
import sys

from parsl_poncho.errors import PonchoError

# Each subcommand lives in its own module with `register(subparsers)`; it sets `func` on its
# parser to a callable taking the parsed namespace and returning an exit code.
_SUBCOMMAND_MODULES = ("parsl_poncho.cli._channel", "parsl_poncho.cli._cache")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="parsl-poncho", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `parsl-poncho` with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PonchoError as exc:
        print(f"parsl-poncho: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
