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

import hashlib
import itertools
import logging
import os
import queue
import shutil
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cloudpickle
from parsl.data_provider.files import File
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES
from parsl.multiprocessing import SpawnContext, SpawnProcess
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin, get_std_fname_mode

from parsl_poncho.errors import (
    ExecutorError,
    MissingModuleError,
    RemoteTaskError,
    TaskSerializationError,
    UnresolvedImportError,
)
from parsl_poncho.workqueue import (
    FileToWq,
    ManagerSettings,
    TaskToWq,
    WqToTask,
    explain_result,
    run_manager,
)

logger = logging.getLogger(__name__)

#: Node-wide unpack cache on workers. Work Queue points TMPDIR at each task's own sandbox, so
#: the shim's ${TMPDIR:-/tmp} default would unpack every task again; expanded by the worker's sh.
DEFAULT_WORKER_CACHE = '"${PARSL_PONCHO_WORKER_CACHE:-/tmp/parsl-poncho-$(id -u)}"'

#: Parsl resource-specification keys that map onto Work Queue task resources.
RESOURCE_KEYS = ("cores", "memory", "disk", "gpus", "priority", "running_time_min")


@dataclass(frozen=True)
class _Prepared:
    """What submit() worked out for a task, kept until its env is ready."""

    id: str
    category: str
    resources: Mapping[str, Any]
    task_dir: Path
    inputs: tuple[FileToWq, ...]
    outputs: tuple[FileToWq, ...]


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
    :param worker_options: extra ``work_queue_worker`` options.
    :param worker_executable: the worker command (wrap it to run workers in containers).
    :param init_command: shell command run before each task.
    :param autocategory: one Work Queue category per app (else ``parsl-default``).
    :param autolabel: let Work Queue measure and label task resources.
    :param autolabel_window: tasks measured before labelling.
    :param default_cores: cores given to a task without a resource specification.
    :param scaling_cores_per_worker: cores per worker assumed when scaling blocks.
    :param channels: conda channels replacing the specs' own (None: keep the specs').
    :param cache_dir: environment cache (None: ``$PARSL_PONCHO_CACHE`` or ~/.cache/parsl-poncho).
    :param pkg_mapping: import name -> distribution overrides for the analysis.
    :param extra_pkgs: distributions added to every env. :param ignore: modules never shipped.
    :param pin_transitive: pin dependencies of included distributions to the host's versions.
    :param pip_index_url, pip_extra_index_urls, pip_find_links: where pip installs from.
    :param build_options: a ``BuildOptions`` for the builder (solver, workdir, ...).
    :param data: ``{"git": {VAR: {...}}, "http": {VAR: {...}}}`` in the PONCHO spec format,
      added to every env: each VAR points at that data inside the env on the workers.
    :param default_disk: MB of sandbox a task without ``disk`` in its resource specification
      asks for, on top of its env tarball (None: let Work Queue give it the worker's whole
      free disk, which a worker forsakes as soon as its free disk shrinks).
    :param seed_channel: make a local conda channel from this host's CPython (once; cheap
      after) and build python and pip from it: envs get exactly the submit side's interpreter
      and build with no conda channel reachable. Specs needing other conda packages use their
      channels (or ``channels``) after it.
    :param verify: import the analysed modules in each new env on this host before dispatch.
    :param unpack_timeout: seconds a task waits for another task's unpack on a worker.
    :param worker_cache_dir: where workers unpack envs, shared by the tasks of a node (None:
      ``$PARSL_PONCHO_WORKER_CACHE`` on the worker, else ``/tmp/parsl-poncho-<uid>``).
    :param storage_access: Parsl staging providers. :param working_dir: kept for compatibility.
    :param full_debug: write Work Queue's debug log (needed to count transfers).
    :param remote_monitoring_radio: how tasks report monitoring (default: filesystem radio).
    :param analyzer: an Analyzer to use instead of one built from the options above.
    :param store: an EnvStore to use instead of one built from the options above.
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
        worker_options: str = "",
        worker_executable: str = "work_queue_worker",
        init_command: str = "",
        autocategory: bool = True,
        autolabel: bool = False,
        autolabel_window: int = 1,
        default_cores: int = 1,
        scaling_cores_per_worker: int = 1,
        channels: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        pkg_mapping: Mapping[str, str] | None = None,
        extra_pkgs: Sequence[str] = (),
        ignore: Sequence[str] = (),
        pin_transitive: bool = True,
        pip_index_url: str | None = None,
        pip_extra_index_urls: Sequence[str] = (),
        pip_find_links: Sequence[str] = (),
        build_options: Any = None,
        seed_channel: bool = True,
        data: Mapping[str, Any] | None = None,
        default_disk: int | None = 1024,
        verify: bool = True,
        unpack_timeout: int = 600,
        worker_cache_dir: str | None = None,
        storage_access: list[Any] | None = None,
        working_dir: str = ".",
        full_debug: bool = True,
        remote_monitoring_radio: Any = None,
        analyzer: Any = None,
        store: Any = None,
    ):
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
        self.worker_options = worker_options
        self.worker_executable = worker_executable
        self.init_command = init_command
        self.autocategory = autocategory
        self.autolabel = autolabel
        self.autolabel_window = autolabel_window
        self.default_cores = default_cores
        self.scaling_cores_per_worker = scaling_cores_per_worker
        self.channels = list(channels) if channels is not None else None
        self.cache_dir = cache_dir
        self.pkg_mapping = dict(pkg_mapping or {})
        self.extra_pkgs = list(extra_pkgs)
        self.ignore = list(ignore)
        self.pin_transitive = pin_transitive
        self.pip_index_url = pip_index_url
        self.pip_extra_index_urls = list(pip_extra_index_urls)
        self.pip_find_links = list(pip_find_links)
        self.build_options = build_options
        self.seed_channel = seed_channel
        self.data = dict(data or {})
        self._data_spec = _data_spec(self.data) if self.data else None
        self._with_data: dict[int, tuple[Any, Any]] = {}
        self.default_disk = default_disk
        self.verify = verify
        self.unpack_timeout = unpack_timeout
        self.worker_cache_dir = worker_cache_dir
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.full_debug = full_debug
        self.analyzer = analyzer
        self.store = store
        if remote_monitoring_radio is None:
            from parsl.monitoring.radios.filesystem import FilesystemRadio

            remote_monitoring_radio = FilesystemRadio()
        self.remote_monitoring_radio = remote_monitoring_radio

        self._ids = itertools.count()
        self._tasks_lock = threading.Lock()
        self._env_lock = threading.Lock()
        self._built: dict[str, Future] = {}
        self._ready: dict[tuple[str, frozenset[str]], Future] = {}
        self._started = False
        self._stopping = threading.Event()
        self._chosen_port: int | None = None
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
        self._shim_inputs = self._stage_shims(base / "shim")
        self._analyzer = self.analyzer if self.analyzer is not None else self._make_analyzer()
        self._store = self.store if self.store is not None else self._make_store()
        self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.label}-verify")
        self._start_manager()
        self._collector = threading.Thread(
            target=self._collect_results, name=f"{self.label}-collector", daemon=True
        )
        self._collector.start()
        self.worker_command = self._worker_command()
        self._started = True
        logger.info("%s listening on port %s; worker command: %s", self.label,
                    self._chosen_port, self.worker_command)

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
        env_hash = self._store.key(spec) if hasattr(self._store, "key") else spec.hash()
        task = self._prepare(func, resource_specification or {}, payload, args, kwargs)
        fu: Future = Future()
        fu.parsl_executor_task_id = task.id  # type: ignore[attr-defined]
        fu.parsl_poncho_env_hash = env_hash  # type: ignore[attr-defined]
        fu.resource_specification = resource_specification  # type: ignore[attr-defined]
        with self._tasks_lock:
            self._tasks[task.id] = fu
        logger.info("task %s (%s) uses env %s", task.id, task.category, env_hash)
        ready = self._env_ready(spec, env_hash, modules)
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
                total += int(spec.get("cores", self.default_cores))
        return total

    @property
    def workers_per_node(self) -> int | float:
        """Cores one worker is assumed to offer when scaling."""
        return self.scaling_cores_per_worker

    def _get_launch_command(self, block_id: str) -> str:
        return f"PARSL_WORKER_BLOCK_ID={block_id} {self.worker_command}"

    def shutdown(self) -> None:
        """Stop the manager (workers are told to exit, the port closes) and fail leftovers."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        self._should_stop.set()
        self._process.join(timeout=30)
        if self._process.is_alive():
            logger.warning("%s: manager process did not stop; terminating it", self.label)
            self._process.terminate()
            self._process.join(timeout=10)
        self._collector.join(timeout=10)
        self._prep_pool.shutdown(wait=False, cancel_futures=True)
        self._cancel_blocks()
        self._fail_outstanding(ExecutorError(f"{self.label} was shut down before the task ran"))
        for q in (self._task_queue, self._result_queue):
            q.close()
            q.join_thread()
        if self.store is None and hasattr(self._store, "close"):
            self._store.close(wait=False)  # a build in flight finishes in the background
        shutil.rmtree(self._unpack_dir, ignore_errors=True)
        super().shutdown()
        logger.info("%s shut down", self.label)

    # -- building blocks --------------------------------------------------------------------
    def _make_analyzer(self) -> Any:
        """The Analyzer configured from this executor's options."""
        from parsl_poncho.analyze import Analyzer

        return Analyzer(pkg_mapping=self.pkg_mapping or None, extra_pkgs=tuple(self.extra_pkgs),
                        ignore=tuple(self.ignore), pin_transitive=self.pin_transitive,
                        channels=self.channels)

    def _make_store(self) -> Any:
        """The EnvStore configured from this executor's options."""
        from parsl_poncho.store import EnvStore

        cache = Path(self.cache_dir).expanduser() if self.cache_dir else None
        builder = SeededBuilder() if self.seed_channel else None
        return EnvStore(cache, build_options=self._make_build_options(), builder=builder)

    def _make_build_options(self) -> Any:
        """BuildOptions from the pip options, unless build_options was given."""
        if self.build_options is not None:
            return self.build_options
        from parsl_poncho.build import BuildOptions

        return _build_options_with(BuildOptions, index_url=self.pip_index_url,
                                   extra_index_urls=tuple(self.pip_extra_index_urls),
                                   find_links=tuple(self.pip_find_links),
                                   channels=tuple(self.channels) if self.channels else None)

    def _stage_shims(self, dest: Path) -> tuple[FileToWq, FileToWq]:
        """Copy the worker shim and runner under content-derived names (cached on workers)."""
        from parsl_poncho.shim import poncho_run_path, run_function_path

        dest.mkdir(parents=True, exist_ok=True)
        staged = []
        for src, remote in ((poncho_run_path(), "poncho_run"),
                            (run_function_path(), "run_function.py")):
            data = Path(src).read_bytes()
            local = dest / f"{remote}-{hashlib.sha256(data).hexdigest()[:16]}"
            if not local.exists():
                tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")  # one per process
                tmp.write_bytes(data)
                tmp.chmod(0o755)
                os.replace(tmp, local)
            staged.append(FileToWq(str(local), remote, cache=True))
        self._poncho_run_local = Path(staged[0].local)
        return staged[0], staged[1]

    def _start_manager(self) -> None:
        """Spawn the Work Queue manager process and learn its port."""
        self._task_queue = SpawnContext.Queue()
        self._result_queue = SpawnContext.Queue()
        self._should_stop = SpawnContext.Event()
        mailbox = SpawnContext.Queue()
        settings = ManagerSettings(
            port=self.port, project_name=self.project_name,
            project_password_file=self.project_password_file,
            log_dir=str(self._log_dir) if self.full_debug else None,
            autolabel=self.autolabel, autolabel_window=self.autolabel_window,
        )
        self._process = SpawnProcess(
            target=run_manager, name=f"{self.label}-wq-manager",
            kwargs={"settings": settings, "task_queue": self._task_queue,
                    "result_queue": self._result_queue, "port_mailbox": mailbox,
                    "should_stop": self._should_stop},
        )
        self._process.start()
        try:
            port = mailbox.get(timeout=60)
        except queue.Empty:
            port = None
        mailbox.close()
        if port is None:
            self._process.join(timeout=5)
            raise ExecutorError(
                f"{self.label}: the Work Queue manager did not start (port {self.port} in use? "
                f"see {self._log_dir} and the Parsl log)"
            )
        self._chosen_port = int(port)

    def _worker_command(self) -> str:
        """The command a provider block runs to start one worker."""
        parts = [self.worker_executable]
        if self.project_password_file:
            parts += ["--password", self.project_password_file]
        if self.worker_options:
            parts.append(self.worker_options)
        if self.project_name:
            parts += ["-M", self.project_name]
        else:
            parts += [self.address or socket.gethostname(), str(self._chosen_port)]
        return " ".join(parts)

    # -- submission -------------------------------------------------------------------------
    def _analyse(self, func: Callable, args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
        """The spec of ``func`` and the modules (-> distribution) it needs; memoised by Analyzer.

        :raises MissingModuleError: (an ImportError) the function imports a module that exists
            nowhere here, so the task fails the way it would on a worker.
        """
        try:
            spec = self._add_data(self._analyzer.analyze(func, *args, **kwargs))
        except UnresolvedImportError as exc:
            if isinstance(exc, MissingModuleError) or _importable(exc.module):
                raise
            raise MissingModuleError(str(exc), module=exc.module,
                                     function=exc.function) from exc
        modules: dict[str, Any] = {}
        if self.verify and hasattr(self._analyzer, "requirements"):
            modules = modules_from_requirements(self._analyzer.requirements(func, *args, **kwargs))
        return spec, modules

    def _add_data(self, spec: Any) -> Any:
        """``spec`` with the executor's ``data`` added (memoised per analysed spec object)."""
        if self._data_spec is None:
            return spec
        hit = self._with_data.get(id(spec))
        if hit is None or hit[0] is not spec:
            import dataclasses

            merged = dataclasses.replace(spec, git={**spec.git, **self._data_spec.git},
                                         http={**spec.http, **self._data_spec.http})
            hit = self._with_data[id(spec)] = (spec, merged)  # holding spec keeps id unique
        return hit[1]

    def _prepare(self, func: Callable, resource_spec: Mapping[str, Any], payload: bytes,
                 args: tuple, kwargs: dict) -> _Prepared:
        """Write fn.pkl and work out resources, category and staged files."""
        task_id = str(next(self._ids))
        task_dir = self._data_dir / task_id
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / "fn.pkl").write_bytes(payload)
        resources = wq_resources(resource_spec, default_cores=self.default_cores)
        category = _app_name(func) if self.autocategory else "parsl-default"
        inputs, outputs = staged_files(args, kwargs)
        return _Prepared(task_id, category, resources, task_dir, inputs, outputs)

    def _env_ready(self, spec: Any, env_hash: str, modules: Mapping[str, Any]) -> Future:
        """Future of the Env once built (one build per hash) and verified for ``modules``."""
        key = (env_hash, frozenset(modules))
        with self._env_lock:
            ready = self._ready.get(key)
            if ready is not None:
                return ready
            built = self._built.get(env_hash)
            if built is None:
                built = self._store.get(spec)
                self._built[env_hash] = built
            ready = Future()
            self._ready[key] = ready
        built.add_done_callback(lambda b: self._after_build(b, ready, env_hash, dict(modules)))
        return ready

    def _after_build(self, built: Future, ready: Future, env_hash: str,
                     modules: dict[str, Any]) -> None:
        """Build finished: pass its error on, or verify the env in the prep thread."""
        exc = built.exception()
        if exc is not None:
            logger.error("env %s failed to build: %s", env_hash, exc)
            ready.set_exception(exc)
            return
        env = built.result()
        if not self.verify or not modules or self._verified_marker(env, modules).exists():
            ready.set_result(env)
            return
        try:
            self._prep_pool.submit(self._verify, env, modules, ready)
        except RuntimeError as exc:  # pool shut down
            ready.set_exception(ExecutorError(f"{self.label} shut down: {exc}"))

    def _verify(self, env: Any, modules: dict[str, Any], ready: Future) -> None:
        """Import ``modules`` in ``env`` on this host; resolve ``ready`` accordingly."""
        from parsl_poncho.build.verify import verify_env

        try:
            verify_env(Path(env.tarball), modules, env_hash=env.hash,
                       poncho_run=self._poncho_run_local, unpack_dir=self._unpack_dir,
                       sha256=getattr(env, "sha256", None))
        except Exception as exc:  # noqa: BLE001 - goes to exactly the tasks needing this env
            logger.error("env %s failed verification: %s", env.hash, exc)
            ready.set_exception(exc)
        else:
            logger.info("env %s verified: %s import", env.hash, ", ".join(sorted(modules)))
            marker = self._verified_marker(env, modules)
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError:
                logger.debug("cannot record verification in %s", marker, exc_info=True)
            ready.set_result(env)

    def _verified_marker(self, env: Any, modules: Mapping[str, Any]) -> Path:
        """A file in the env cache saying ``modules`` import in ``env`` (checked in any run)."""
        key = hashlib.sha256(
            "\n".join([env.hash, getattr(env, "sha256", ""), *sorted(modules)]).encode()
        ).hexdigest()
        base = Path(getattr(self._store, "cache_dir", self._unpack_dir))
        return base / "verified" / key

    def _dispatch(self, task: _Prepared, fu: Future, ready: Future) -> None:
        """The env is ready (or failed): send the task to Work Queue, or fail its future."""
        exc = ready.exception()
        if exc is not None:
            self._finish(task.id, exc=exc)
            return
        if self._stopping.is_set():
            return
        env = ready.result()
        if env.hash != fu.parsl_poncho_env_hash:  # type: ignore[attr-defined]
            fu.parsl_poncho_env_hash = env.hash  # type: ignore[attr-defined]
        tarball = f"env-{env.hash}.tar.gz"
        self._task_queue.put(TaskToWq(
            id=task.id,
            command=self._task_command(tarball, getattr(env, "sha256", None)),
            category=task.category,
            inputs=(*self._shim_inputs, FileToWq(str(env.tarball), tarball, cache=True),
                    FileToWq(str(task.task_dir / "fn.pkl"), "fn.pkl"), *task.inputs),
            outputs=(FileToWq(str(task.task_dir / "result.pkl"), "result.pkl"), *task.outputs),
            result_file=str(task.task_dir / "result.pkl"),
            resources=self._disk_for(task.resources, env),
            max_retries=self.max_retries,
            env=self.env,
        ))

    def _disk_for(self, resources: Mapping[str, Any], env: Any) -> Mapping[str, Any]:
        """Give a task without ``disk`` its env tarball plus ``default_disk`` MB of sandbox."""
        if "disk" in resources or self.default_disk is None:
            return resources
        size_mb = -(-int(getattr(env, "size", 0) or 0) // 2**20)
        return {**resources, "disk": size_mb + self.default_disk}

    def _task_command(self, tarball: str, sha256: str | None) -> str:
        """The shell command of one task: the shim unpacks and activates, the runner runs."""
        shim = ["./poncho_run", "-e", tarball, "-w", str(self.unpack_timeout)]
        if sha256:
            shim += ["-s", sha256]
        shim += ["--cache-dir", self.worker_cache_dir or DEFAULT_WORKER_CACHE]
        command = " ".join(shim + ["--", "python", "run_function.py", "fn.pkl", "result.pkl",
                                   "2>&1"])
        return f"{self.init_command}; {command}" if self.init_command else command

    # -- results ----------------------------------------------------------------------------
    def _collect_results(self) -> None:
        """Collector thread: turn WqToTask messages into future results."""
        while not self._should_stop.is_set() or not self._result_queue.empty():
            try:
                msg: WqToTask = self._result_queue.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive() and not self._should_stop.is_set():
                    self.set_bad_state_and_fail_all(ExecutorError(
                        f"{self.label}: the Work Queue manager process died "
                        f"(exit code {self._process.exitcode}); see {self._log_dir}"))
                    return
                continue
            except (EOFError, OSError):
                return
            try:
                self._complete(msg)
            except Exception:  # noqa: BLE001 - never let one bad result kill the collector
                logger.exception("could not complete task %s", msg.id)
                self._finish(msg.id, exc=ExecutorError(f"could not read the result of {msg.id}"))

    def _complete(self, msg: WqToTask) -> None:
        """Resolve the future of one finished task."""
        env_hash = self._env_hash_of(msg.id)
        if msg.result_file is None:
            where = f" on {msg.host}" if msg.host else ""
            self._finish(msg.id, exc=ExecutorError(
                f"Task {msg.id} (env {env_hash}) produced no result{where}. "
                + explain_result(msg.result, msg.return_status, msg.output)))
            return
        with open(msg.result_file, "rb") as f:
            report = cloudpickle.load(f)
        if report.get("status") == "ok":
            self._finish(msg.id, value=report.get("value"))
        else:
            self._finish(msg.id, exc=remote_exception(report, env_hash=env_hash, host=msg.host))

    def _env_hash_of(self, task_id: str) -> str:
        with self._tasks_lock:
            fu = self._tasks.get(task_id)
        return getattr(fu, "parsl_poncho_env_hash", "?")

    def _finish(self, task_id: str, *, value: Any = None, exc: BaseException | None = None) -> None:
        """Pop a task and set its future; on success drop its per-task files."""
        with self._tasks_lock:
            fu = self._tasks.pop(task_id, None)
        if fu is None or fu.done():
            return
        if exc is not None:
            fu.set_exception(exc)
        else:
            fu.set_result(value)
            shutil.rmtree(self._data_dir / task_id, ignore_errors=True)

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


#: Conda packages the seeded local channel provides.
SEEDED_PACKAGES = frozenset({"python", "pip", "setuptools"})


class SeededBuilder:
    """The store's builder: python and pip from a channel seeded from this host's CPython.

    A spec whose conda part holds only what the seeded channel provides (what the analysis
    gives on a pip-based host) is built from that channel alone, so no conda channel needs to
    be reachable; any other spec searches the seeded channel first, then its own channels.
    """

    def __init__(self, channel_dir: Path | None = None):
        self.channel_dir = channel_dir
        self._seeded: Path | None = None
        self._lock = threading.Lock()

    def channel(self) -> Path:
        """Seed the local channel once per process (cheap when it is current)."""
        with self._lock:
            if self._seeded is None:
                from parsl_poncho.build import seed_channel

                self._seeded = seed_channel(self.channel_dir)
            return self._seeded

    def __call__(self, spec: Any, output: Path, *, options: Any = None,
                 progress: Any = None) -> Any:
        import dataclasses

        from parsl_poncho.build import BuildOptions, build_env
        from parsl_poncho.build.conda import spec_name

        options = options if options is not None else BuildOptions()
        seeded = str(self.channel())
        names = {spec_name(m) for m in spec.conda}
        if names <= SEEDED_PACKAGES:
            options = dataclasses.replace(options, channels=(seeded,))
        else:
            options = dataclasses.replace(
                options, extra_channels=(seeded, *options.extra_channels))
        return build_env(spec, output, options=options, progress=progress)


# -- pure helpers (tested directly) ---------------------------------------------------------


def unwrap_error_wrapper(func: Callable) -> Callable:
    """The app function inside Parsl's ``wrap_error`` wrapper, or ``func`` unchanged.

    Parsl wraps every python and bash app in ``parsl.app.errors.wrap_error``, whose wrapper
    imports parsl on the worker just to turn an exception into a RemoteExceptionWrapper value.
    This executor carries remote exceptions itself (same type, remote traceback attached), so it
    submits the inner function: a python app's env then needs no parsl, and Parsl sees the same
    failure either way. (The analysis strips the same wrapper: see ``strip_parsl_wrapper``.)
    """
    from parsl_poncho.analyze import strip_parsl_wrapper

    return strip_parsl_wrapper(func)


def serialize_call(func: Callable, args: tuple, kwargs: dict) -> bytes:
    """cloudpickle ``(func, args, kwargs)``; on failure name the object that cannot be pickled.

    :raises TaskSerializationError: naming the function, positional or keyword argument.
    """
    try:
        return cloudpickle.dumps((func, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        what = _unpicklable_part(func, args, kwargs) or f"the call of {_app_name(func)!r}"
        raise TaskSerializationError(
            f"Cannot send {what} to a worker: it cannot be pickled ({type(exc).__name__}: "
            f"{exc}). Pass picklable values (e.g. a path instead of an open file, data "
            "instead of a lock or connection), or create the object inside the app.",
            what=what,
        ) from exc


def _unpicklable_part(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """Which part of a call fails to pickle, described for a message."""
    parts: list[tuple[str, Any]] = [(f"function {_app_name(func)!r}", func)]
    parts += [(f"positional argument {i} ({type(a).__name__}: {_short(a)})", a)
              for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r} ({type(v).__name__}: {_short(v)})", v)
              for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            cloudpickle.dumps(obj)
        except Exception:  # noqa: BLE001
            return what
    return None


def _importable(module: str) -> bool:
    """Whether ``module`` can be found on this host (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _app_name(func: Callable) -> str:
    """A readable name for an app callable (sees through partials and wrappers)."""
    while True:
        name = getattr(func, "__name__", None)
        if name and name not in ("wrapper", "wrapped"):
            return name
        inner = getattr(func, "__wrapped__", None) or getattr(func, "func", None)
        if inner is None:
            return name or type(func).__name__
        func = inner


def _data_spec(data: Mapping[str, Any]) -> Any:
    """Validate the executor's ``data`` option as the git/http sections of a spec.

    :raises SpecError: naming each problem, e.g. ``http.DB.sha256``.
    """
    from parsl_poncho.errors import SpecError
    from parsl_poncho.spec import Spec

    unknown = sorted(set(data) - {"git", "http"})
    if unknown:
        raise SpecError(f"PonchoExecutor(data=...) takes only 'git' and 'http' sections, "
                        f"not {unknown}", problems=[f"{k}: unknown section" for k in unknown])
    return Spec.from_dict({"conda": {"channels": [], "dependencies": []}, **data},
                          source="PonchoExecutor(data=...)")


def wq_resources(resource_spec: Mapping[str, Any], *, default_cores: int = 1) -> dict[str, Any]:
    """Parsl resource specification -> Work Queue task resources.

    Unknown keys are logged and ignored (Parsl's generic tests pass ``{'cpus': 1}`` and expect
    the task to run). A task without ``cores`` gets ``default_cores`` so it never takes a whole
    multi-core worker; memory and disk not given are then shared out by Work Queue.

    >>> wq_resources({})
    {'cores': 1}
    >>> wq_resources({'cores': 2, 'memory': 1000, 'disk': 100})
    {'cores': 2, 'memory': 1000, 'disk': 100}
    """
    unknown = sorted(set(resource_spec) - set(RESOURCE_KEYS))
    if unknown:
        logger.warning("ignoring unknown resource specification keys %s (known: %s)",
                       unknown, ", ".join(RESOURCE_KEYS))
    out = {k: resource_spec[k] for k in RESOURCE_KEYS if resource_spec.get(k) is not None}
    out.setdefault("cores", default_cores)
    return out


def staged_files(args: tuple, kwargs: dict) -> tuple[tuple[FileToWq, ...], tuple[FileToWq, ...]]:
    """Work Queue inputs/outputs for Parsl Files and std streams with relative paths.

    Absolute paths are left alone (a shared file system is assumed for them), as Parsl's
    WorkQueueExecutor does.
    """
    inputs = [f for f in (*args, *kwargs.get("inputs", ()),
                          *(v for k, v in kwargs.items() if k not in ("inputs", "outputs")))
              if isinstance(f, File)]
    outputs = [f for f in kwargs.get("outputs", ()) if isinstance(f, File)]
    ins = tuple(FileToWq(f.filepath, f.filepath) for f in inputs
                if f.scheme == "file" and not os.path.isabs(f.filepath))
    outs = [FileToWq(f.filepath, f.filepath) for f in outputs
            if f.scheme == "file" and not os.path.isabs(f.filepath)]
    for stream in ("stdout", "stderr"):
        target = kwargs.get(stream)
        if target and not isinstance(target, File):
            try:
                name, _mode = get_std_fname_mode(stream, target)
            except Exception:  # noqa: BLE001 - bad values are Parsl's to report
                continue
            if not os.path.isabs(name):
                outs.append(FileToWq(name, name))
    return ins, tuple(outs)


def remote_exception(report: Mapping[str, Any], *, env_hash: str = "?",
                     host: str = "") -> BaseException:
    """The exception a task raised, carrying its remote traceback.

    The original exception (same type, so ``except ValueError`` still works) gets the remote
    traceback as ``remote_traceback`` and as a note shown in tracebacks; if it could not be
    pickled, a RemoteTaskError with its type, message and traceback stands in for it.
    """
    tb = str(report.get("traceback") or "")
    where = f"env-{env_hash}" + (f" on {host}" if host else "")
    exc = report.get("exception")
    if isinstance(exc, BaseException):
        try:
            exc.remote_traceback = tb  # type: ignore[attr-defined]
            if hasattr(exc, "add_note"):
                exc.add_note(f"Remote traceback ({where}):\n{tb}")
        except Exception:  # noqa: BLE001 - exotic exception types
            pass
        return exc
    return RemoteTaskError(
        f"{report.get('exc_type', 'Exception')}: {report.get('message', '')} "
        f"(raised in {where}; the exception itself could not be pickled)\n"
        f"Remote traceback:\n{tb}",
        remote_traceback=tb,
    )


def modules_from_requirements(req: Any) -> dict[str, str | None]:
    """Module -> providing distribution (None for local code) from ``Analyzer.requirements()``.

    Modules first used inside a ``try`` block (optional imports) are left out: their absence
    is something the function handles.
    """
    providers = getattr(req, "providers", None)
    if not isinstance(providers, Mapping):
        return {}
    uses = getattr(req, "modules", {}) or {}
    out: dict[str, str | None] = {}
    for module, dist in providers.items():
        if getattr(uses.get(module), "optional", False):
            continue
        out[str(module)] = None if str(dist).startswith("local:") else str(dist)
    return out


def env_hash_of(future: Any) -> str | None:
    """The env hash a task ran with, from an executor future or a Parsl AppFuture.

    >>> env_hash_of(app_future)  # doctest: +SKIP
    'bcb6feef0c97...'
    """
    record = vars(future).get("task_record")  # AppFuture.__getattr__ would make a future
    if isinstance(record, Mapping):
        future = record.get("exec_fu")
    if future is None:
        return None
    return vars(future).get("parsl_poncho_env_hash")


def _build_options_with(cls: Any, **pip: Any) -> Any:
    """Construct BuildOptions with whichever pip option field names it has."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    kwargs = {k: v for k, v in pip.items() if k in names and v}
    return cls(**kwargs)


__all__ = ["PonchoExecutor", "env_hash_of", "remote_exception", "serialize_call", "staged_files",
           "unwrap_error_wrapper", "wq_resources"]
