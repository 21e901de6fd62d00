"""How a task runs on a worker: its exec mode, its command line and the worker files it needs.

Two modes, named as in Parsl's TaskVineExecutor:

``regular``
    ``poncho_run`` unpacks the env once per node and activates it; a new Python runs
    ``run_function.py``, which unpickles the call, imports what it needs and runs it.
``serverless``
    ``poncho_run`` does the same, then runs the ``poncho_serve`` sh client, which hands the
    call to the node's function server of this env (started on first use, with the app's
    analysed modules imported once) and waits: the server forks one child per call, so a task
    costs a fork instead of a Python start plus imports. If the server cannot serve, the client
    runs the call in regular mode instead, so no task is lost.

The executor picks the mode per task (:func:`exec_mode_for`), and asks :class:`WorkerCommands`
for the command and the cached worker files of that mode.

Resource-specification keys that are not Work Queue resources, only messages to the executor
(stripped by :func:`without_executor_keys`): :data:`EXEC_MODE_KEY`; :data:`SERVER_KEY`, a
:class:`ServerScope` giving a serverless task a function server of its own per node (a
``multiprocessing.Pool``'s: its initializer runs once in it, before the forks); and
:data:`CACHED_INPUTS_KEY`, extra input files that workers cache (see ``tasks.staged_files``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from parsl_poncho.errors import ExecutorError
from parsl_poncho.shim import PONCHO_RUN, PONCHO_SERVE, RUN_FUNCTION, SERVER_FILES
from parsl_poncho.workqueue import FileToWq

ExecMode = Literal["regular", "serverless"]
EXEC_MODES: tuple[ExecMode, ...] = ("regular", "serverless")

#: Resource-specification key that chooses an app's exec mode (not a Work Queue resource).
EXEC_MODE_KEY = "exec_mode"
#: Resource-specification key: a :class:`ServerScope` (serverless tasks only).
SERVER_KEY = "function_server"
#: Resource-specification key: a sequence of ``FileToWq`` inputs, cached on the workers.
CACHED_INPUTS_KEY = "cached_inputs"
_EXECUTOR_KEYS = (EXEC_MODE_KEY, SERVER_KEY, CACHED_INPUTS_KEY)
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_INPUT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")

#: Node-wide unpack cache on workers. Work Queue points TMPDIR at each task's own sandbox, so
#: the shim's ${TMPDIR:-/tmp} default would unpack every task again; expanded by the worker's sh.
DEFAULT_WORKER_CACHE = '"${PARSL_PONCHO_WORKER_CACHE:-/tmp/parsl-poncho-$(id -u)}"'

#: Worker files per mode, as (file in worker_shim/, name in the task sandbox); serverless adds
#: the client and what it copies beside the server.
_WORKER_FILES: Mapping[ExecMode, tuple[str, ...]] = {
    "regular": (PONCHO_RUN, RUN_FUNCTION),
    "serverless": (PONCHO_RUN, RUN_FUNCTION, PONCHO_SERVE,
                   *(name for name in SERVER_FILES if name != RUN_FUNCTION)),
}

#: At most this many preloaded modules go on a command line (the rest import on first use).
MAX_PRELOAD = 200
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_exec_mode(value: Any, where: str) -> ExecMode:
    """``value`` if it names an exec mode.

    :raises ExecutorError: naming ``where`` the value came from and the valid modes.
    """
    if value not in EXEC_MODES:
        raise ExecutorError(f"{where} is {value!r}; use one of {', '.join(map(repr, EXEC_MODES))}")
    return value


def exec_mode_for(func: Callable, resource_spec: Mapping[str, Any], default: ExecMode
                  ) -> ExecMode:
    """The mode one task runs in: the app's ``exec_mode`` resource key, else ``default``.

    Bash apps always run regular: their work is a shell command, a preloaded server saves
    them nothing, and the command must see the task's own process environment.

    :raises ExecutorError: the resource specification names an unknown mode.
    """
    mode = resource_spec.get(EXEC_MODE_KEY, default)
    mode = check_exec_mode(mode, f"parsl_resource_specification[{EXEC_MODE_KEY!r}]")
    if getattr(func, "__module__", None) == "parsl.app.bash":
        return "regular"
    return mode


def without_executor_keys(resource_spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The resource specification without the keys that talk to the executor (exec mode,
    function server, cached inputs), which are not Work Queue resources."""
    if not any(key in resource_spec for key in _EXECUTOR_KEYS):
        return resource_spec
    return {k: v for k, v in resource_spec.items() if k not in _EXECUTOR_KEYS}


without_exec_mode = without_executor_keys  # the name before function servers had scopes


@dataclass(frozen=True)
class ServerScope:
    """Which function server a serverless task uses on its node, beyond its environment.

    :param pool: a name of letters, digits, ``_`` and ``-``: tasks with the same pool share a
        server of their own (per node and environment), apart from other tasks' servers.
    :param init: the remote name of a cached input (see :data:`CACHED_INPUTS_KEY`) holding
        ``cloudpickle.dumps((initializer, initargs, {}))``: the server runs it once, after its
        preload and before it forks any call (worker_shim/pool_init.py).
    :param max_calls: the server exits after handing out this many calls (the next call starts
        a new one, which runs ``init`` again): ``maxtasksperchild``.
    :raises ExecutorError: a name that is not safe on a command line, or ``max_calls`` < 1.
    """

    pool: str
    init: str | None = None
    max_calls: int | None = None

    def __post_init__(self) -> None:
        if not _SCOPE_NAME.match(self.pool):
            raise ExecutorError(f"ServerScope pool {self.pool!r} must be 1-40 letters, digits, "
                                "'_' or '-'")
        if self.init is not None and not _INPUT_NAME.match(self.init):
            raise ExecutorError(f"ServerScope init {self.init!r} must be a plain file name "
                                "(letters, digits, '_', '.', '-')")
        if self.max_calls is not None and self.max_calls < 1:
            raise ExecutorError(f"ServerScope max_calls is {self.max_calls!r}; use None or >= 1")

    def options(self) -> list[str]:
        """poncho_serve's options for this scope."""
        out = ["--pool", self.pool]
        if self.init:
            out += ["--init", self.init]
        if self.max_calls:
            out += ["--max-calls", str(self.max_calls)]
        return out


@dataclass(frozen=True)
class ServerCall:
    """How one serverless task uses its node's function server: what a new server preloads,
    and its :class:`ServerScope` (None: the environment's shared server)."""

    preload: tuple[str, ...] = ()
    scope: ServerScope | None = None


def server_call(mode: ExecMode, modules: Sequence[str], resource_spec: Mapping[str, Any]
                ) -> ServerCall | None:
    """The :class:`ServerCall` of a task of ``mode`` (None for regular tasks).

    :raises ExecutorError: the :data:`SERVER_KEY` value is not a :class:`ServerScope`.
    """
    if mode != "serverless":
        return None
    scope = resource_spec.get(SERVER_KEY)
    if scope is not None and not isinstance(scope, ServerScope):
        raise ExecutorError(f"parsl_resource_specification[{SERVER_KEY!r}] is {scope!r}; "
                            "use a parsl_poncho.exec_modes.ServerScope")
    return ServerCall(preload_list(modules), scope)


def preload_list(modules: Sequence[str]) -> tuple[str, ...]:
    """Module names safe for a command line, sorted, at most :data:`MAX_PRELOAD`."""
    return tuple(sorted(m for m in set(modules) if _MODULE_NAME.match(m)))[:MAX_PRELOAD]


@dataclass(frozen=True)
class WorkerCommands:
    """Builds task commands and stages the worker files they run (cached on workers).

    :param staged: worker file name -> its staged copy (see :func:`stage_worker_files`).
    :param unpack_timeout: seconds a task waits for another task's unpack on a node.
    :param worker_cache_dir: node cache (None: ``$PARSL_PONCHO_WORKER_CACHE`` or /tmp/...).
    :param init_command: shell command run before each task.
    :param server_idle_timeout: seconds an idle function server lives on a node.
    """

    staged: Mapping[str, FileToWq]
    unpack_timeout: int = 600
    worker_cache_dir: str | None = None
    init_command: str = ""
    server_idle_timeout: int = 300

    def inputs(self, mode: ExecMode, env: Any = None) -> tuple[FileToWq, ...]:
        """The cached worker files a task of ``mode`` needs in its sandbox, and with ``env``
        (a :class:`~parsl_poncho.layers.LayeredEnv`) its base tarball and code layer."""
        files = tuple(self.staged[name] for name in _WORKER_FILES[mode])
        if env is None:
            return files
        files += (FileToWq(str(env.tarball), env.base_name, cache=True),)
        if env.code is not None:
            files += (FileToWq(str(env.code.tarball), env.code.name, cache=True),)
        return files

    def command_for(self, mode: ExecMode, env: Any,
                    server: ServerCall | Sequence[str] | None = ()) -> str:
        """:meth:`command` for a :class:`~parsl_poncho.layers.LayeredEnv` (base + code);
        ``server`` is a :class:`ServerCall` or just the modules to preload."""
        code = env.code
        if not isinstance(server, ServerCall):
            server = ServerCall(tuple(server or ()))
        return self.command(mode, env.base_name, env.sha256, server.preload,
                            code=code.name if code else None,
                            code_sha256=code.sha256 if code else None, scope=server.scope)

    def command(self, mode: ExecMode, tarball: str, sha256: str | None,
                preload: Sequence[str] = (), *, code: str | None = None,
                code_sha256: str | None = None, scope: ServerScope | None = None) -> str:
        """The shell command of one task: the shim unpacks and activates (the base env, then
        the code layer ``code`` on PYTHONPATH), then the call runs."""
        shim = ["./poncho_run", "-e", tarball, "-w", str(self.unpack_timeout)]
        if sha256:
            shim += ["-s", sha256]
        if code:
            shim += ["-c", code] + (["--code-sha256", code_sha256] if code_sha256 else [])
        shim += ["--cache-dir", self.worker_cache_dir or DEFAULT_WORKER_CACHE, "--"]
        if mode == "serverless":
            run = ["sh", "poncho_serve", "--idle", str(self.server_idle_timeout)]
            if preload:
                run += ["--preload", ",".join(preload)]
            if scope is not None:
                run += scope.options()
            run += ["--", "fn.pkl", "result.pkl"]
        else:
            run = ["python", "run_function.py", "fn.pkl", "result.pkl"]
        command = " ".join([*shim, *run, "2>&1"])
        return f"{self.init_command}; {command}" if self.init_command else command


def stage_worker_files(dest: Path) -> dict[str, FileToWq]:
    """Copy every worker file under a content-derived name, so workers cache each version once.

    :raises ShimNotFoundError: a worker file is missing from the installation.
    """
    from parsl_poncho.shim import shim_file

    dest.mkdir(parents=True, exist_ok=True)
    staged = {}
    for name in sorted({n for names in _WORKER_FILES.values() for n in names}):
        data = shim_file(name).read_bytes()
        local = dest / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}"
        if not local.exists():
            tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")  # one per process
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            os.replace(tmp, local)
        staged[name] = FileToWq(str(local), name, cache=True)
    return staged
