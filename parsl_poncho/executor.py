"""PonchoExecutor: a Parsl executor on Work Queue that runs each app inside an env built for it.

Data flow of one task (``submit`` returns its future at once, it never waits for a build)::

    submit(fn, resource_spec, *args, **kwargs)
      pickle (fn, args, kwargs)             -> fn.pkl            (errors name the bad object)
      analyze(fn, *args, **kwargs)          -> Spec              (memoised)
      store.get(spec)                       -> Future[Env]       (one build per spec)
      verify_env(env, modules)              -> env ready         (once per env and module set)
      TaskToWq -> manager process -> Work Queue -> worker: poncho_run ... run_function.py
      WqToTask -> collector thread -> value or remote exception on the future

The environment hash each task runs with is logged and kept on the executor future as
``parsl_poncho_env_hash`` (read it from an AppFuture with :func:`env_hash_of`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin

from parsl_poncho.delivery import EnvDelivery, check_env_delivery, delivery_for
from parsl_poncho.envs import SpecAdditions
from parsl_poncho.errors import ExecutorError, MissingModuleError, UnresolvedImportError
from parsl_poncho.exec_modes import (
    ExecMode,
    WorkerCommands,
    check_exec_mode,
    exec_mode_for,
    server_call,
    stage_worker_files,
)
from parsl_poncho.learning import Learner, importable_here, misses_of
from parsl_poncho.manager import ManagerProcess
from parsl_poncho.monitor import Monitor, disk_for, thread_env
from parsl_poncho.options import (
    EnvOptions,
    SizingOptions,
    WorkerOptions,
    deprecated_pip_arguments,
    fold_flat_arguments,
)
from parsl_poncho.pip_sources import PipSources
from parsl_poncho.sizing import Sizer
from parsl_poncho.tasks import PreparedTask as _Prepared
from parsl_poncho.tasks import (
    app_name,
    remote_exception,
    serialize_call,
    staged_files,
    unwrap_error_wrapper,
    wq_resources,
)
from parsl_poncho.workqueue import (
    CategoryToWq,
    FileToWq,
    ManagerSettings,
    TaskToWq,
    WqToTask,
    explain_result,
    worker_command,
)

if TYPE_CHECKING:
    from parsl_poncho.analyze import Analyzer
    from parsl_poncho.build import BuildOptions
    from parsl_poncho.envs import ReadyEnvs
    from parsl_poncho.spec import Spec
    from parsl_poncho.store import EnvStore

logger = logging.getLogger(__name__)

class PonchoExecutor(BlockProviderExecutor, RepresentationMixin):
    """Run Parsl apps on Work Queue workers, each inside a conda environment built for it.

    Replace ``WorkQueueExecutor(...)`` with ``PonchoExecutor(...)`` in a Parsl config. Every
    argument has a safe default; see the README's configuration reference.

    :param label: executor label. :param provider: where workers run (default ``LocalProvider()``).
    :param address: address workers connect to (default: this host's name).
    :param port: manager port; 0 picks a free one. :param project_name: Work Queue catalog name
      (workers then find the manager by name). :param project_password_file: shared password.
    :param env: environment variables set for every task.
    :param max_retries: Work Queue retries of a task whose worker is lost (None: forever).
    :param envs: an ``EnvOptions``: what goes into each env and how it is built (channels,
      cache_dir, extra_pkgs, pkg_mapping, ignore, data, verify, learn_missing, ...).
    :param workers: a ``WorkerOptions``: the worker command and options, the node cache, the
      unpack timeout, the function servers' idle timeout.
    :param sizing: a ``SizingOptions``: default cores and disk, right-sizing, autolabel.
    :param autocategory: one Work Queue category per app (else ``parsl-default``).
    :param pip_sources: where the pip part installs from, a ``PipSources`` (default: this
      host's pip and uv configuration; ``PipSources.hermetic()`` ignores it).
    :param build_options: a ``BuildOptions`` for the builder (solver, workdir, ...).
    :param storage_access: Parsl staging providers. :param working_dir: kept for compatibility.
    :param full_debug: write Work Queue's debug log (needed to count transfers).
    :param manager_restarts: times a dead Work Queue manager process is restarted (on the same
      port, so workers reconnect; the tasks it held are sent again) before the executor fails.
    :param remote_monitoring_radio: how tasks report monitoring (default: filesystem radio).
    :param function_exec_mode: ``"regular"`` (a Python per task) or ``"serverless"`` (a function
      server per node and env forks each call); an app's ``exec_mode`` resource key overrides it.
    :param env_delivery: how envs reach workers: ``"manager"`` (Work Queue sends each to each
      worker), ``SharedDir(path)`` or ``Url(...)`` (nodes fetch once each; parsl_poncho.delivery).
    :param analyzer: an Analyzer to use instead of one built from the options above.
    :param store: an EnvStore to use instead of one built from the options above.

    The flat names the groups replace (``channels=``, ``worker_options=``, ``default_cores=``,
    ``pip_index_url=``, ...) still work for one release, with a FutureWarning
    (parsl_poncho.options).
    """

    def __init__(
        self,
        label: str = "PonchoExecutor",
        provider: ExecutionProvider | None = None,
        address: str | None = None,
        port: int = 0,
        project_name: str | None = None,
        project_password_file: str | None = None,
        env: dict[str, str] | None = None,
        max_retries: int | None = 1,
        envs: EnvOptions | None = None,
        workers: WorkerOptions | None = None,
        sizing: SizingOptions | None = None,
        autocategory: bool = True,
        pip_sources: PipSources | None = None,
        build_options: BuildOptions | None = None,
        storage_access: list[Any] | None = None,
        working_dir: str = ".",
        full_debug: bool = True,
        manager_restarts: int = 3,
        remote_monitoring_radio: Any = None,
        function_exec_mode: ExecMode = "regular",
        env_delivery: EnvDelivery = "manager",
        analyzer: Analyzer | None = None,
        store: EnvStore | None = None,
        **deprecated: Any,
    ):
        groups = fold_flat_arguments(deprecated, {"envs": envs, "workers": workers,
                                                  "sizing": sizing}, PonchoExecutor)
        if provider is None:
            from parsl.providers import LocalProvider

            provider = LocalProvider()
        BlockProviderExecutor.__init__(self, provider=provider, block_error_handler=True)
        self.label = label
        self.address = address
        self.port = port
        self.project_name = project_name
        if project_password_file is not None:
            # Absolute, because workers started by the provider may run in another directory.
            given = project_password_file
            project_password_file = os.path.abspath(os.path.expanduser(given))
            if not os.path.isfile(project_password_file):
                raise ExecutorError(
                    f"project_password_file {given!r} is not a file: create it "
                    "or pass project_password_file=None"
                )
        self.project_password_file = project_password_file
        self.env = dict(env or {})
        self.max_retries = max_retries
        self.envs, self.workers, self.sizing = groups["envs"], groups["workers"], groups["sizing"]
        self.autocategory = autocategory
        self.pip_sources = (pip_sources or PipSources()).adding(
            *deprecated_pip_arguments(deprecated))
        self.build_options = build_options
        self._data = SpecAdditions(self.envs.data)  # pip sources are added at start()
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.full_debug = full_debug
        self.manager_restarts = manager_restarts
        self.function_exec_mode = check_exec_mode(function_exec_mode, "function_exec_mode")
        self.env_delivery = check_env_delivery(env_delivery)
        self.analyzer = analyzer
        self.store = store
        if remote_monitoring_radio is None:
            from parsl.monitoring.radios.filesystem import FilesystemRadio

            remote_monitoring_radio = FilesystemRadio()
        self.remote_monitoring_radio = remote_monitoring_radio

        self._ids = itertools.count()
        self._tasks_lock = threading.Lock()
        self._prepared: dict[str, _Prepared] = {}
        self._started = False
        self._stopping = threading.Event()
        self._manager: ManagerProcess | None = None
        self.worker_command = ""

    # -- Parsl executor interface -----------------------------------------------------------
    def start(self) -> None:
        """Create the run directories, start the Work Queue manager process and collector."""
        super().start()
        base = Path(self.run_dir) / self.label
        self._data_dir = base / "function_data"
        self._log_dir = base / "wq"
        self._unpack_dir = base / "verify"
        for d in (self._data_dir, self._log_dir):
            d.mkdir(parents=True, exist_ok=True)
        staged = stage_worker_files(base / "shim")
        self._poncho_run_local = Path(staged["poncho_run"].local)
        w = self.workers
        self._commands = delivery_for(self.env_delivery, WorkerCommands(
            staged, w.unpack_timeout, w.cache_dir, w.init_command, w.server_idle_timeout),
            base / "shim", base, self.address)
        self._data.sources = self.pip_sources.resolve()
        self._store = self.store if self.store is not None else self._make_store()
        self._store.build_options = self._make_build_options(self._store.build_options)
        self._learner = Learner(self._make_analyzer, self._store.cache_dir,
                                enabled=self.envs.learn_missing)
        self._envs = self._make_ready_envs()
        self._monitor, self._sizer = Monitor(self.label), Sizer(self.sizing.right_size, self._send)
        self._manager = self._make_manager()
        self._manager.start()
        self._collector = threading.Thread(
            target=self._collect_results, name=f"{self.label}-collector", daemon=True
        )
        self._collector.start()
        self.worker_command = self._worker_command(self._manager.port)
        self._started = True
        logger.info("%s listening on port %s; worker command: %s", self.label,
                    self._manager.port, self.worker_command)

    def submit(self, func: Callable, resource_specification: dict, *args: Any,
               **kwargs: Any) -> Future:
        """Queue ``func(*args, **kwargs)``; returns at once with the executor future.

        :raises TaskSerializationError: the function or an argument cannot be pickled.
        :raises AnalysisError: the function's dependencies cannot be worked out.
        """
        if self.bad_state_is_set:
            raise self.executor_exception
        if not self._started:
            raise ExecutorError(f"{self.label}: submit() called before start()")
        func = unwrap_error_wrapper(func)
        payload = serialize_call(func, args, kwargs)
        spec, modules = self._analyse(func, args, kwargs)
        env_hash = self._envs.key(spec)  # base hash + code layer key
        task = self._prepare(func, resource_specification or {}, payload, args, kwargs, modules)
        fu: Future = Future()
        fu.parsl_executor_task_id = task.id  # type: ignore[attr-defined]
        fu.parsl_poncho_env_hash = env_hash  # type: ignore[attr-defined]
        fu.resource_specification = resource_specification  # type: ignore[attr-defined]
        self._monitor.track(fu, app_name(func), task.resources)
        with self._tasks_lock:
            self._tasks[task.id] = fu
            self._prepared[task.id] = task
        logger.info("task %s (%s) uses env %s", task.id, task.category, env_hash)
        ready = self._envs.get(spec, env_hash, modules)
        ready.add_done_callback(lambda r: self._dispatch(task, fu, r))
        return fu

    def outstanding(self) -> int:
        """Cores needed by tasks not finished yet (for Parsl's block scaling)."""
        with self._tasks_lock:
            futures = list(self._tasks.values())
        total = 0
        for fu in futures:
            if not fu.done():
                spec = getattr(fu, "resource_specification", None) or {}
                total += int(spec.get("cores", self.sizing.default_cores))
        return total

    @property
    def workers_per_node(self) -> int | float:
        """Cores one worker is assumed to offer when scaling."""
        return self.sizing.scaling_cores_per_worker

    def _get_launch_command(self, block_id: str) -> str:
        return f"PARSL_WORKER_BLOCK_ID={block_id} {self.worker_command}"

    def shutdown(self) -> None:
        """Stop the manager (workers are told to exit, the port closes) and fail leftovers."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        self._manager.stop()
        self._collector.join(timeout=10)
        self._envs.close()
        self._cancel_blocks()
        self._fail_outstanding(ExecutorError(f"{self.label} was shut down before the task ran"))
        self._monitor.log_summary()
        self._manager.close()
        self._commands.close()  # Url(serve=True): its server
        if self.store is None:
            self._store.close(wait=False)  # a build in flight finishes in the background
        shutil.rmtree(self._unpack_dir, ignore_errors=True)
        super().shutdown()
        logger.info("%s shut down", self.label)

    # -- building blocks --------------------------------------------------------------------
    def _make_analyzer(self, learnt: tuple[str, ...] = ()) -> Analyzer:
        """The Analyzer of this executor's options, plus distributions an app learnt."""
        from parsl_poncho.analyze import Analyzer

        if self.analyzer is not None and not learnt:
            return self.analyzer
        envs = self.envs
        return Analyzer(pkg_mapping=envs.pkg_mapping or None, ignore=envs.ignore,
                        extra_pkgs=(*envs.extra_pkgs, *learnt), channels=envs.channels,
                        pin_transitive=envs.pin_transitive)

    def _make_store(self) -> EnvStore:
        """The EnvStore configured from this executor's options."""
        from parsl_poncho.envs import SeededBuilder
        from parsl_poncho.store import EnvStore

        cache = Path(self.envs.cache_dir).expanduser() if self.envs.cache_dir else None
        builder = SeededBuilder() if self.envs.seed_channel else None
        return EnvStore(cache, build_options=self.build_options, builder=builder)

    def _make_build_options(self, options: BuildOptions | None) -> BuildOptions:
        """``options`` (default: from ``channels``) with the pip sources' credentials."""
        from parsl_poncho.build import BuildOptions

        options = options or BuildOptions(channels=self.envs.channels or None)
        return dataclasses.replace(options, pip_sources=self._data.sources)

    def _make_ready_envs(self) -> ReadyEnvs:
        """Builds through the store, then checks each new env before its tasks are sent."""
        from parsl_poncho.envs import ReadyEnvs

        return ReadyEnvs(self._store, verify=self.envs.verify, poncho_run=self._poncho_run_local,
                         unpack_dir=self._unpack_dir, name=self.label)

    def _make_manager(self) -> ManagerProcess:
        """The Work Queue manager process, from this executor's options (not started)."""
        settings = ManagerSettings(
            port=self.port, project_name=self.project_name,
            project_password_file=self.project_password_file,
            log_dir=str(self._log_dir) if self.full_debug else None,
            autolabel=self.sizing.autolabel, autolabel_window=self.sizing.autolabel_window,
        )
        return ManagerProcess(settings, self.label, self._log_dir, self.manager_restarts)

    def _worker_command(self, port: int | None) -> str:
        """The command a provider block runs to start one worker of the manager on ``port``."""
        return worker_command(self.workers.executable, self.workers.options, port,
                              address=self.address, project_name=self.project_name,
                              password_file=self.project_password_file)

    # -- submission -------------------------------------------------------------------------
    def _analyse(self, func: Callable, args: tuple, kwargs: dict
                 ) -> tuple[Spec, dict[str, str | None]]:
        """The spec of ``func`` and the modules (-> distribution) it needs; memoised by Analyzer.

        :raises MissingModuleError: (an ImportError) the function imports a module that exists
            nowhere here, so the task fails the way it would on a worker.
        """
        from parsl_poncho.envs import modules_from_requirements

        try:
            analyzer = self._learner.analyzer_for(func)
            spec, requirements = analyzer.analyze_call(func, *args, **kwargs)
        except UnresolvedImportError as exc:
            if isinstance(exc, MissingModuleError) or importable_here(exc.module):
                raise
            raise MissingModuleError(str(exc), module=exc.module,
                                     function=exc.function) from exc
        return self._data.add(spec), modules_from_requirements(requirements)

    def _prepare(self, func: Callable, resource_spec: Mapping[str, Any], payload: bytes,
                 args: tuple, kwargs: dict, modules: Mapping[str, Any]) -> _Prepared:
        """Write fn.pkl and work out exec mode, resources, category and staged files."""
        mode = exec_mode_for(func, resource_spec, self.function_exec_mode)
        task_id = str(next(self._ids))
        files = self._data_dir / task_id
        files.with_name(f"{task_id}.fn.pkl").write_bytes(payload)
        resources = wq_resources(resource_spec, default_cores=self.sizing.default_cores)
        category = app_name(func) if self.autocategory else "parsl-default"
        inputs, outputs = staged_files(args, kwargs, resource_spec)
        server = server_call(mode, list(modules), resource_spec)
        return _Prepared(task_id, category, mode, server, resources, files, inputs, outputs,
                         (func, args, kwargs))

    def _dispatch(self, task: _Prepared, fu: Future, ready: Future) -> None:
        """The env is ready (or failed): send the task to Work Queue, or fail its future."""
        exc = ready.exception()
        if exc is not None:
            self._finish(task.id, exc=exc)
            return
        if self._stopping.is_set():
            return
        env = ready.result()
        fu.parsl_poncho_env_hash = env.hash  # type: ignore[attr-defined]
        logger.info("task %s runs in env %s", task.id, env.describe())  # + base and code
        self._send(TaskToWq(
            id=task.id,
            command=self._commands.command_for(task.mode, env, task.server),
            category=task.category,
            inputs=(*self._commands.inputs(task.mode, env),
                    FileToWq(str(task.fn_file), "fn.pkl"), *task.inputs),
            outputs=(FileToWq(str(task.result_file), "result.pkl"), *task.outputs),
            result_file=str(task.result_file),
            resources=disk_for(task.resources, env.size, self.sizing.default_disk),
            max_retries=self.max_retries,
            env=self._sizer.limit(fu, task, thread_env(self.env, task.resources)),
        ))

    def _send(self, msg: TaskToWq | CategoryToWq) -> None:
        """Hand a message to the manager (resent to a restarted one until done)."""
        self._manager.send(msg)

    # -- results ----------------------------------------------------------------------------
    def _collect_results(self) -> None:
        """Collector thread: turn WqToTask messages into future results; if the manager
        died for good, fail everything."""
        try:
            for msg in self._manager.results():
                self._complete_safely(msg)
        except ExecutorError as exc:
            self.set_bad_state_and_fail_all(exc)

    def _complete_safely(self, msg: WqToTask) -> None:
        try:
            self._complete(msg)
        except Exception:  # noqa: BLE001 - never let one bad result kill the collector
            logger.exception("could not complete task %s", msg.id)
            self._finish(msg.id, exc=ExecutorError(f"could not read the result of {msg.id}"))

    def _complete(self, msg: WqToTask) -> None:
        """Resolve the future of one finished task."""
        fu = self._future_of(msg.id)
        env_hash = getattr(fu, "parsl_poncho_env_hash", "?")
        report = msg.read_result()
        if report.get("status") != "ok" and (self._retry_after_learning(msg, report, fu) or
                                             self._sizer.retry(msg, report, self._manager.sent)):
            return
        if msg.result_file is None:
            where = f" on {msg.host}" if msg.host else ""
            self._finish(msg.id, exc=ExecutorError(
                f"Task {msg.id} (env {env_hash}) produced no result{where}. "
                + explain_result(msg.result, msg.return_status, msg.output)))
            return
        self._sizer.observe(msg, fu, self._monitor.observe(fu, msg.id, report))
        if report.get("status") == "ok":
            self._finish(msg.id, value=report.get("value"))
        else:
            self._finish(msg.id, exc=remote_exception(report, env_hash=env_hash, host=msg.host))

    def _retry_after_learning(self, msg: WqToTask, report: Mapping[str, Any],
                              fu: Future | None) -> bool:
        """Send a failed task again if its app just learnt (or had learnt) what it missed."""
        task = self._prepared.get(msg.id)
        misses = misses_of(report, msg.output)
        if fu is None or task is None or not misses or not self._learner.enabled:
            return False
        func, args, kwargs = task.call
        try:
            self._learner.learn(func, misses)
            spec, modules = self._analyse(func, args, kwargs)
            env_hash = self._envs.key(spec)
        except Exception:  # noqa: BLE001 - learning is best effort; the task's error stands
            logger.warning("task %s: could not learn %s", msg.id, misses, exc_info=True)
            return False
        if env_hash == fu.parsl_poncho_env_hash or not self._learner.may_retry(msg.id):
            return False  # nothing new to try: the task fails with its own error
        logger.warning("task %s (%s) missed %s: sending it again with env %s", msg.id,
                       task.category, ", ".join(misses), env_hash)
        fu.parsl_poncho_env_hash = env_hash  # type: ignore[attr-defined]
        self._manager.forget(msg.id)  # a manager restart must not resend it to the old env
        task.result_file.unlink(missing_ok=True)
        ready = self._envs.get(spec, env_hash, modules)
        ready.add_done_callback(lambda r: self._dispatch(task, fu, r))
        return True

    def _future_of(self, task_id: str) -> Future | None:
        with self._tasks_lock:
            return self._tasks.get(task_id)

    def _finish(self, task_id: str, *, value: Any = None, exc: BaseException | None = None) -> None:
        """Pop a task and set its future; on success drop its per-task files."""
        with self._tasks_lock:
            fu = self._tasks.pop(task_id, None)
            task = self._prepared.pop(task_id, None)
        self._learner.forget_task(task_id)
        self._manager.forget(task_id)
        if fu is None or fu.done():
            return
        if exc is not None:
            fu.set_exception(exc)
        else:
            fu.set_result(value)
            if task is not None:
                task.remove_files()

    def _fail_outstanding(self, exc: Exception) -> None:
        with self._tasks_lock:
            ids = list(self._tasks)
        for task_id in ids:
            self._finish(task_id, exc=exc)

    def _cancel_blocks(self) -> None:
        """Cancel provider blocks still running (the DFK normally scales them in first)."""
        live = [b for b, s in self._status.items() if s.state not in TERMINAL_STATES]
        if live and self.provider is not None:
            try:
                self.scale_in(len(live))
            except Exception:  # noqa: BLE001 - best effort on the way out
                logger.warning("%s: cancelling blocks failed", self.label, exc_info=True)
