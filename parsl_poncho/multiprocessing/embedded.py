"""The embedded default executor: what pools use when no Parsl config with a PonchoExecutor is
loaded. A PonchoExecutor (serverless) with local Work Queue workers offering this host's cores,
started by the first pool and stopped at interpreter exit.

Its options can be set before the first pool with :func:`configure` (e.g. a worker wrapper, a
cache directory); :func:`shutdown` stops it earlier than the exit. Its run directory (task
files, Work Queue logs) is a temporary directory, removed at shutdown; built environments stay
in the env cache.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parsl_poncho.errors import PonchoError

if TYPE_CHECKING:
    from parsl_poncho.executor import PonchoExecutor

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"executor": None, "workers": [], "options": {}, "cores": 0}


class EmbeddedExecutorError(PonchoError):
    """The embedded default executor cannot start; the message names the cause and the fix."""


def configure(*, cores: int | None = None, local_workers: int = 1,
              **executor_options: Any) -> None:
    """Options of the embedded default executor, before the first pool starts it.

    :param cores: cores the local workers offer in all (default: this host's).
    :param local_workers: how many local ``work_queue_worker`` processes share those cores.
    :param executor_options: PonchoExecutor arguments (``envs=EnvOptions(cache_dir=...)``,
        ``workers=WorkerOptions(...)``, ...).
    :raises EmbeddedExecutorError: it already runs (call :func:`shutdown` first).

    >>> import parsl_poncho.multiprocessing as mp
    >>> from parsl_poncho import EnvOptions
    >>> mp.embedded.configure(envs=EnvOptions(cache_dir="/scratch/envs"))  # doctest: +SKIP
    """
    with _lock:
        if _state["executor"] is not None:
            raise EmbeddedExecutorError(
                "the embedded executor already runs: call parsl_poncho.multiprocessing."
                "embedded.shutdown() before configure(), or configure it before the first Pool")
        _state["options"] = {**executor_options, "_cores": cores, "_workers": local_workers}


def default_executor() -> PonchoExecutor:
    """The embedded executor, started on first use (one per process).

    :raises EmbeddedExecutorError: Work Queue's worker cannot be found or started.
    """
    with _lock:
        if _state["executor"] is None:
            _start()
        return _state["executor"]


def embedded_cores(executor: Any) -> int:
    """The cores of the embedded executor's workers if ``executor`` is it, else 0."""
    return _state["cores"] if executor is _state["executor"] else 0


def _start() -> None:
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        raise EmbeddedExecutorError(
            "a pool was made while a spawned child process imported the main module (the "
            "executor's Work Queue manager runs in such a process): put the code that makes "
            "pools under `if __name__ == \"__main__\":`, as the standard library asks")
    from parsl.providers import LocalProvider

    from parsl_poncho.executor import PonchoExecutor

    options = dict(_state["options"])
    cores = int(options.pop("_cores", None) or os.cpu_count() or 1)
    nworkers = max(1, int(options.pop("_workers", 1) or 1))
    options.setdefault("label", "poncho-multiprocessing")
    options.setdefault("function_exec_mode", "serverless")
    options.setdefault("max_retries", 3)
    options.setdefault("address", "127.0.0.1")
    run_dir = Path(tempfile.mkdtemp(prefix="parsl-poncho-mp-"))
    executor = PonchoExecutor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
                              **options)
    executor.run_dir = str(run_dir)
    executor.start()
    per_worker = [cores // nworkers + (1 if i < cores % nworkers else 0) for i in range(nworkers)]
    workers = []
    try:
        for n in per_worker:
            command = shlex.split(executor.worker_command)
            # --parent-death: a driver killed without its exit handlers leaves no worker
            command[1:1] = ["--cores", str(max(1, n)), "--parent-death"]
            with open(run_dir / "worker.log", "ab") as log:
                workers.append(subprocess.Popen(
                    command, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))
    except OSError as exc:
        executor.shutdown()
        raise EmbeddedExecutorError(
            f"cannot start a local Work Queue worker ({executor.worker_command!r}): {exc}. "
            "Install Work Queue (Debian: apt-get install coop-computing-tools; conda: "
            "ndcctools), or load a Parsl config with a PonchoExecutor") from exc
    _state.update(executor=executor, workers=workers, cores=sum(per_worker), run_dir=run_dir)
    if not _state.get("atexit"):
        atexit.register(shutdown)
        _state["atexit"] = True
    logger.info("embedded PonchoExecutor started: %d worker(s), %d cores, run dir %s",
                len(workers), sum(per_worker), run_dir)


def worker_pids() -> list[int]:
    """The pids of the embedded executor's running local workers (for tests and tools)."""
    return [w.pid for w in _state["workers"] if w.poll() is None]


def shutdown() -> None:
    """Stop the embedded executor and its workers (at exit, or earlier); a later pool starts
    a new one."""
    with _lock:
        executor, workers = _state["executor"], _state["workers"]
        run_dir = _state.get("run_dir")
        _state.update(executor=None, workers=[], cores=0, run_dir=None)
    if executor is not None:
        try:
            executor.shutdown()
        except Exception:  # noqa: BLE001 - best effort on the way out
            logger.warning("embedded executor: shutdown failed", exc_info=True)
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    if run_dir is not None:  # task files and logs of this process's run only
        shutil.rmtree(run_dir, ignore_errors=True)
