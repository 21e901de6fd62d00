"""Locate the worker-side files (``poncho_run``, ``run_function.py``, and for serverless mode
``poncho_serve`` and the :data:`SERVER_FILES` it copies beside the server) shipped with each task.

The source of truth is ``worker_shim/`` in the repository; ``parsl_poncho/_shim/`` holds symlinks
to it in a checkout and real copies in a built wheel (setuptools copies the link targets), so the
same lookup works from both.

Example::

    from parsl_poncho.shim import poncho_run_path, run_function_path
    command = f"sh ./{poncho_run_path().name} -e env-abc.tar.gz -- python ./run_function.py ..."
"""

from __future__ import annotations

from pathlib import Path

from parsl_poncho.errors import ShimNotFoundError

__all__ = [
    "SERVER_FILES",
    "ShimNotFoundError",
    "call_process_path",
    "function_server_path",
    "poncho_run_path",
    "poncho_serve_path",
    "run_function_path",
    "shim_file",
]

PONCHO_RUN = "poncho_run"
RUN_FUNCTION = "run_function.py"
PONCHO_SERVE = "poncho_serve"
FUNCTION_SERVER = "function_server.py"
CALL_PROCESS = "call_process.py"
HUGE_PAGES = "huge_pages.py"
POOL_INIT = "pool_init.py"
#: What poncho_serve copies from the task sandbox into the function server's directory
#: (pool_init.py: a multiprocessing.Pool's initializer and chunks; parsl_poncho.multiprocessing).
SERVER_FILES = (FUNCTION_SERVER, CALL_PROCESS, HUGE_PAGES, RUN_FUNCTION, POOL_INIT)


def _candidates(name: str) -> list[Path]:
    package_dir = Path(__file__).resolve().parent
    return [package_dir / "_shim" / name, package_dir.parent / "worker_shim" / name]


def shim_file(name: str) -> Path:
    """The absolute path of the worker-side file ``name`` (``poncho_run``, ...).

    :raises ShimNotFoundError: when neither the packaged copy nor the checkout's file exists.
    """
    candidates = _candidates(name)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates)
    raise ShimNotFoundError(
        f"worker-side file {name!r} not found (tried {tried}); reinstall parsl-poncho, or run "
        "from a checkout that has worker_shim/"
    )


def poncho_run_path() -> Path:
    """The POSIX sh script that unpacks an environment once per node and runs a command in it.

    Run it with ``sh`` when its executable bit may have been lost (e.g. some wheel installers).
    """
    return shim_file(PONCHO_RUN)


def run_function_path() -> Path:
    """The runner script: ``python run_function.py FN.pkl RESULT.pkl`` (stdlib + cloudpickle)."""
    return shim_file(RUN_FUNCTION)


def poncho_serve_path() -> Path:
    """The serverless client (POSIX sh), run by poncho_run as the task command:
    ``sh poncho_serve [--idle SECS] [--preload MOD,...] -- FN.pkl RESULT.pkl``.
    """
    return shim_file(PONCHO_SERVE)


def function_server_path() -> Path:
    """The function server poncho_serve starts once per (environment, user) on a node; ship it
    (with the rest of :data:`SERVER_FILES`) in the task sandbox beside poncho_serve.
    """
    return shim_file(FUNCTION_SERVER)


def call_process_path() -> Path:
    """The module function_server.py imports to fork and run each call's process; ship it
    beside function_server.py.
    """
    return shim_file(CALL_PROCESS)
