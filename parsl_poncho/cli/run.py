"""`poncho_package_run`: run a command inside an environment tarball (execs the worker shim).

Arguments are those of cctools' ``poncho_package_run``, handed unchanged to ``poncho_run``:
``-e/--environment ENV.tar.gz [-u/--unpack-to DIR] [-w/--wait-for-lock SECS] [-d/--debug]
[-k] [-n] [-r] [--] COMMAND ARGS...``, plus ``-s/--sha256``, ``--cache-dir`` and
``--cache-max-size``. See ``poncho_package_run --help``.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable, NoReturn

from parsl_poncho.shim import poncho_run_path

Exec = Callable[[str, list[str]], "NoReturn | None"]


def shim_command(argv: list[str]) -> list[str]:
    """The command line that runs ``poncho_run`` with ``argv`` under a POSIX shell."""
    shell = shutil.which("sh") or "/bin/sh"
    return [shell, str(poncho_run_path()), *argv]


def main(argv: list[str] | None = None, *, exec_: Exec = os.execv) -> int:
    """Replace this process with ``sh poncho_run ARGV...``; returns only if ``exec_`` does.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :param exec_: ``os.execv`` or a stand-in for tests; called as ``exec_(path, args)``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shim_command(argv)
    try:
        exec_(command[0], command)
    except OSError as exc:
        print(f"poncho_package_run: error: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0


if __name__ == "__main__":
    sys.exit(main())
