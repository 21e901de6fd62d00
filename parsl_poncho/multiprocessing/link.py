"""The link between a pool and its PonchoExecutor: submit a chunk, learn the workers' cores.

This is the whole interface the multiprocessing package uses (``executor.py`` knows nothing of
pools): a chunk goes in as one ordinary ``PonchoExecutor.submit`` of the trampoline
``_chunk.run_chunk``, with resource-specification keys (see ``parsl_poncho.exec_modes``):

- ``exec_mode: "serverless"``;
- ``function_server: ServerScope(pool, init, max_calls)`` when the pool has an initializer or
  ``maxtasksperchild``: a function server of the pool's own on each node, which runs the
  initializer once, before it forks any chunk;
- ``cached_inputs``: the initializer's file and whatever :meth:`PoolLink.submit_chunk` is given
  as ``cached_inputs`` (``FileToWq`` objects; Work Queue keeps each on a worker for every later
  task, so give each a content-derived remote name). The chunk's calls find them in their
  working directory (the task sandbox) under their remote names.

The executor future of a chunk resolves to the list of the chunk's values, or to the first
exception one of its calls raised (its type kept, the remote traceback attached).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from parsl_poncho.exec_modes import CACHED_INPUTS_KEY, EXEC_MODE_KEY, SERVER_KEY, ServerScope
from parsl_poncho.workqueue import FileToWq

if TYPE_CHECKING:
    from parsl_poncho.executor import PonchoExecutor

logger = logging.getLogger(__name__)

#: Kinds of chunk (worker_shim/pool_init.py): func(x), func(*x), func(*args, **kwds).
MAP, STAR, APPLY = 0, 1, 2


def current_executor() -> PonchoExecutor:
    """The PonchoExecutor of the loaded Parsl config, else the embedded default (started now).

    :raises EmbeddedExecutorError: the embedded default cannot start (see its message).
    """
    if "parsl" in sys.modules:  # a loaded config means parsl is imported already
        loaded = _loaded_poncho_executor()
        if loaded is not None:
            return loaded
    from parsl_poncho.multiprocessing.embedded import default_executor

    return default_executor()


def _loaded_poncho_executor() -> PonchoExecutor | None:
    import parsl

    from parsl_poncho.executor import PonchoExecutor

    try:
        dfk = parsl.dfk()
    except Exception:  # noqa: BLE001 - NoDataFlowKernelError: nothing is loaded
        return None
    found = [ex for ex in dfk.executors.values() if isinstance(ex, PonchoExecutor)]
    if len(found) > 1:
        logger.warning("several PonchoExecutors are loaded (%s): pools use %r",
                       ", ".join(ex.label for ex in found), found[0].label)
    return found[0] if found else None


def worker_cores(executor: PonchoExecutor) -> int:
    """The cores the executor's connected workers offer (the embedded default's are known);
    when that cannot be asked, the cores of one scaled block; at least 1."""
    from parsl_poncho.multiprocessing.embedded import embedded_cores

    known = embedded_cores(executor)
    if known:
        return known
    asked = _ask_manager_for_cores(executor.worker_command)
    if asked:
        return asked
    blocks = max(1, getattr(executor.provider, "init_blocks", 1) or 1)
    return max(1, int(executor.workers_per_node) * blocks)


def _ask_manager_for_cores(worker_command: str) -> int:
    """Total cores of the workers connected to the manager in ``worker_command`` (0: unknown),
    from ``work_queue_status -W HOST PORT``."""
    parts = worker_command.split()
    if len(parts) < 2 or not parts[-1].isdigit() or shutil.which("work_queue_status") is None:
        return 0
    try:
        out = subprocess.run(["work_queue_status", "-W", "-t", "5", parts[-2], parts[-1]],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return cores_in_status(out)


def cores_in_status(text: str) -> int:
    """The sum of the cores column (CORE_A: all of a worker's; older: CORES) of
    ``work_queue_status -W`` output; 0 if there is none."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = [w.upper() for w in lines[0]] if lines else []
    column = next((header.index(n) for n in ("CORE_A", "CORES") if n in header), None)
    if column is None:
        return 0
    total = 0
    for row in lines[1:]:
        value = row[column] if len(row) > column else ""
        total += int(value) if value.isdigit() else 0
    return total


class PoolLink:
    """One pool's way to its executor: its scope, its initializer file, chunk submission.

    :param executor: a started PonchoExecutor.
    :param initializer: run once per node in the pool's function server (with ``initargs``).
    :param max_calls: ``maxtasksperchild``: the server is replaced after this many chunks.
    """

    def __init__(self, executor: PonchoExecutor, initializer: Callable | None = None,
                 initargs: Sequence[Any] = (), max_calls: int | None = None) -> None:
        from parsl_poncho.multiprocessing import _chunk

        _register_by_value(_chunk)
        self.executor = executor
        self.key = uuid.uuid4().hex[:16]
        self._dir = Path(tempfile.mkdtemp(prefix=f"parsl-poncho-pool-{self.key}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)  # at exit too
        self._init = None
        inputs: tuple[FileToWq, ...] = ()
        if initializer is not None:
            init_file = self._write_initializer(initializer, tuple(initargs))
            inputs = (init_file,)
            self._init = _chunk.InitRef(init_file.remote, initializer, tuple(initargs))
        scope = None
        if initializer is not None or max_calls:
            scope = ServerScope(self.key, self._init.name if self._init else None, max_calls)
        self._spec: dict[str, Any] = {EXEC_MODE_KEY: "serverless"}
        if scope is not None:
            self._spec[SERVER_KEY] = scope
        self._inputs = inputs
        self._runners: dict[tuple[str, str, str], Callable] = {}  # by the function's name

    def _write_initializer(self, initializer: Callable, initargs: tuple) -> FileToWq:
        """The initializer's file, named by its content (workers cache it).

        :raises TaskSerializationError: the initializer or an argument cannot be pickled.
        """
        from parsl_poncho.tasks import serialize_call

        data = serialize_call(initializer, initargs, {})  # the format run_function.py reads
        name = f"poncho-init-{hashlib.sha256(data).hexdigest()[:24]}.pkl"
        path = self._dir / name
        path.write_bytes(data)
        return FileToWq(str(path), name, cache=True)

    def submit_chunk(self, kind: int, func: Callable, items: Sequence[Any], *,
                     cached_inputs: Sequence[FileToWq] = ()) -> Future:
        """Send one chunk as one Work Queue task; its future gives the list of its values.

        :param kind: :data:`MAP` (``func(x)``), :data:`STAR` (``func(*x)``) or :data:`APPLY`
            (items are ``(args, kwds)``).
        :param cached_inputs: extra input files for this task, cached on the workers (the
            joblib backend ships large arguments once per node this way); the calls find
            them in their working directory under their remote names.
        :raises TaskSerializationError: ``func`` or an item cannot be pickled.
        :raises AnalysisError: what ``func`` needs cannot be worked out.
        """
        spec = dict(self._spec)
        inputs = (*self._inputs, *cached_inputs)
        if inputs:
            spec[CACHED_INPUTS_KEY] = inputs
        return self.executor.submit(self._runner(func), spec, kind, func, list(items),
                                    self._init)

    def _runner(self, func: Callable) -> Callable:
        """The chunk runner named after ``func``, kept by name: the pool holds no reference to
        the functions (joblib's batches carry their arguments)."""
        from parsl_poncho.multiprocessing import _chunk

        key = _chunk.runner_name(func)
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = _chunk.runner_for(*key)
        return runner

    def close(self) -> None:
        """Remove the pool's local files (the workers keep their cached copies)."""
        self._cleanup()


def _register_by_value(module: Any) -> None:
    import cloudpickle

    if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)


def default_processes(executor: PonchoExecutor) -> int:
    """``Pool()``'s number of processes: the workers' cores, or this host's if none are known."""
    return worker_cores(executor) or os.cpu_count() or 1
