"""What crosses to a worker and back for one task: the pickled call, its Work Queue resources
and staged files, and the exception a task raised, rebuilt on the submit side.

Pure functions, tested directly; the executor strings them together.
"""

from __future__ import annotations

import io
import linecache
import logging
import os
import traceback
import types
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import cloudpickle
from parsl.data_provider.files import File
from parsl.utils import get_std_fname_mode

from parsl_poncho.errors import ExecutorError, RemoteTaskError, TaskSerializationError
from parsl_poncho.exec_modes import CACHED_INPUTS_KEY, ExecMode, ServerCall, without_executor_keys
from parsl_poncho.workqueue import FileToWq

logger = logging.getLogger(__name__)

#: Parsl resource-specification keys that map onto Work Queue task resources.
RESOURCE_KEYS = ("cores", "memory", "disk", "gpus", "priority", "running_time_min")


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


#: The file name cloudpickle >= 3.1.3 gives every code object it pickles by value.
_DYNAMIC_CODE = "<dynamic-code>"


def _reduce_code_keeping_filename(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the real file name put back."""
    reduced = _cloudpickle_code_reduce(code)
    constructor, args = reduced[0], reduced[1]
    args = tuple(code.co_filename if arg == _DYNAMIC_CODE else arg for arg in args)
    return (constructor, args, *reduced[2:])


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table.get(types.CodeType)


class _SourceKeepingPickler(cloudpickle.Pickler):
    """cloudpickle, except that functions pickled by value keep their file name.

    cloudpickle 3.1.3 renames it ``<dynamic-code>`` (deterministic payloads), so a remote
    traceback could no longer say where a frame is; the submit side reads the source lines
    from that name (see :func:`render_remote_traceback`). The payload still loads with any
    cloudpickle: only a string argument of ``types.CodeType`` changes.
    """

    if _cloudpickle_code_reduce is not None:
        dispatch_table = ChainMap({types.CodeType: _reduce_code_keeping_filename},
                                  cloudpickle.Pickler.dispatch_table)


def dumps_keeping_sources(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)`` with real file names in code pickled by value."""
    with io.BytesIO() as buffer:
        _SourceKeepingPickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
        return buffer.getvalue()


def serialize_call(func: Callable, args: tuple, kwargs: dict) -> bytes:
    """cloudpickle ``(func, args, kwargs)``; on failure name the object that cannot be pickled.

    :raises TaskSerializationError: naming the function, positional or keyword argument.
    """
    try:
        return dumps_keeping_sources((func, args, kwargs))
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        what = _unpicklable_part(func, args, kwargs) or f"the call of {app_name(func)!r}"
        raise TaskSerializationError(
            f"Cannot send {what} to a worker: it cannot be pickled ({type(exc).__name__}: "
            f"{exc}). Pass picklable values (e.g. a path instead of an open file, data "
            "instead of a lock or connection), or create the object inside the app.",
            what=what,
        ) from exc


def _unpicklable_part(func: Callable, args: tuple, kwargs: dict) -> str | None:
    """Which part of a call fails to pickle, described for a message."""
    parts: list[tuple[str, Any]] = [(f"function {app_name(func)!r}", func)]
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


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def app_name(func: Callable) -> str:
    """A readable name for an app callable (sees through partials and wrappers)."""
    while True:
        name = getattr(func, "__name__", None)
        if name and name not in ("wrapper", "wrapped"):
            return name
        inner = getattr(func, "__wrapped__", None) or getattr(func, "func", None)
        if inner is None:
            return name or type(func).__name__
        func = inner


def wq_resources(resource_spec: Mapping[str, Any], *, default_cores: int = 1) -> dict[str, Any]:
    """Parsl resource specification -> Work Queue task resources.

    The keys that talk to the executor (``exec_mode``, ``function_server``, ``cached_inputs``:
    see exec_modes.py) are left out. Unknown keys are logged and ignored (Parsl's generic
    tests pass ``{'cpus': 1}`` and expect the task to run). A task without ``cores`` gets
    ``default_cores`` so it never takes a whole multi-core worker; memory and disk not given
    are then shared out by Work Queue.

    >>> wq_resources({})
    {'cores': 1}
    >>> wq_resources({'cores': 2, 'memory': 1000, 'disk': 100})
    {'cores': 2, 'memory': 1000, 'disk': 100}
    """
    resource_spec = without_executor_keys(resource_spec)
    unknown = sorted(set(resource_spec) - set(RESOURCE_KEYS))
    if unknown:
        logger.warning("ignoring unknown resource specification keys %s (known: %s)",
                       unknown, ", ".join(RESOURCE_KEYS))
    out = {k: resource_spec[k] for k in RESOURCE_KEYS if resource_spec.get(k) is not None}
    out.setdefault("cores", default_cores)
    return out


def staged_files(args: tuple, kwargs: dict, resource_spec: Mapping[str, Any] | None = None
                 ) -> tuple[tuple[FileToWq, ...], tuple[FileToWq, ...]]:
    """Work Queue inputs/outputs for Parsl Files and std streams with relative paths, and the
    inputs listed under the resource specification's ``cached_inputs`` key.

    Absolute paths are left alone (a shared file system is assumed for them), as Parsl's
    WorkQueueExecutor does. ``cached_inputs`` holds ``FileToWq`` objects; each is sent with
    ``cache=True`` (a worker keeps it for every later task: give it a content-derived name).

    :raises ExecutorError: ``cached_inputs`` holds something else than ``FileToWq`` objects.
    """
    cached = _cached_inputs(resource_spec or {})
    inputs = [f for f in (*args, *kwargs.get("inputs", ()),
                          *(v for k, v in kwargs.items() if k not in ("inputs", "outputs")))
              if isinstance(f, File)]
    outputs = [f for f in kwargs.get("outputs", ()) if isinstance(f, File)]
    ins = tuple(FileToWq(f.filepath, f.filepath) for f in inputs
                if f.scheme == "file" and not os.path.isabs(f.filepath)) + cached
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


def _cached_inputs(resource_spec: Mapping[str, Any]) -> tuple[FileToWq, ...]:
    given = resource_spec.get(CACHED_INPUTS_KEY) or ()
    if isinstance(given, FileToWq) or not all(isinstance(f, FileToWq) for f in given):
        raise ExecutorError(f"parsl_resource_specification[{CACHED_INPUTS_KEY!r}] is "
                            f"{given!r}; use a sequence of parsl_poncho.workqueue.FileToWq")
    return tuple(f if f.cache else FileToWq(f.local, f.remote, cache=True) for f in given)


def remote_exception(report: Mapping[str, Any], *, env_hash: str = "?",
                     host: str = "") -> BaseException:
    """The exception a task raised, carrying its remote traceback.

    The original exception (same type, so ``except ValueError`` still works) gets the remote
    traceback as ``remote_traceback`` and as a note shown in tracebacks; if it could not be
    pickled, a RemoteTaskError with its type, message and traceback stands in for it.
    """
    tb = render_remote_traceback(report)
    where = f"env-{env_hash}" + (f" on {host}" if host else "")
    exc = report.get("exception")
    if isinstance(exc, BaseException):
        try:
            exc.remote_traceback = tb  # type: ignore[attr-defined]
            if hasattr(exc, "add_note"):
                exc.add_note(f"Remote traceback ({where}):\n{tb}")
                _note_submit_host_file(exc)
        except Exception:  # noqa: BLE001 - exotic exception types
            pass
        return exc
    return RemoteTaskError(
        f"{report.get('exc_type', 'Exception')}: {report.get('message', '')} "
        f"(raised in {where}; the exception itself could not be pickled)\n"
        f"Remote traceback:\n{tb}",
        remote_traceback=tb,
    )


def _note_submit_host_file(exc: BaseException) -> None:
    """A task that failed to open a file this (the submit) host has: say why, since the path
    looks right to the user (pandarallel's default passes chunks as files in /dev/shm)."""
    name = getattr(exc, "filename", None) if isinstance(exc, FileNotFoundError) else None
    if not isinstance(name, str) or not os.path.isabs(name) or not os.path.exists(name):
        return
    hint = ("pass the data in the task's arguments instead (pandarallel: "
            "pandarallel.initialize(use_memory_fs=False))"
            if os.path.basename(name).startswith("pandarallel_") else
            "pass the data in the task's arguments, or put the file where the workers see it")
    exc.add_note(f"{name} is a file on the submit host, but the task ran on a worker node, "
                 f"which may not see the submit host's files: {hint}")


def render_remote_traceback(report: Mapping[str, Any]) -> str:
    """The remote traceback text, with source lines the worker could not show filled in here.

    A worker has no source for code pickled by value: the runner sends the frames of the last
    exception as ``(file, line, function, source or None)`` and this side reads the missing
    source lines from its own files. Older runners sent only the text, which is kept as is.
    """
    text = str(report.get("traceback") or "")
    frames = report.get("frames")
    if not frames or not all(isinstance(f, (list, tuple)) and len(f) == 4 for f in frames):
        return text
    stack = traceback.StackSummary.from_list(
        [(str(file), int(line), str(name), source or _source_line(str(file), int(line)))
         for file, line, name, source in frames])
    return (str(report.get("chain_text") or "") + "Traceback (most recent call last):\n"
            + "".join(stack.format()) + str(report.get("exc_only") or ""))


def _source_line(filename: str, lineno: int) -> str:
    return linecache.getline(filename, lineno).strip()


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


@dataclass(frozen=True)
class PreparedTask:
    """What submit() worked out for a task, kept until its env is ready."""

    id: str
    category: str
    mode: ExecMode
    server: ServerCall | None  # serverless: preload and the function server's scope
    resources: Mapping[str, Any]
    files: Path  # the call is files + ".fn.pkl", the result files + ".result.pkl"
    inputs: tuple[FileToWq, ...]
    outputs: tuple[FileToWq, ...]
    call: tuple[Callable, tuple, dict]  # to analyse again after learning

    # Two files beside the others, not a directory per task: a mkdir and an rmtree per task
    # cost the submitting process more than the rest of its own work (bench/dispatch.py).
    @property
    def fn_file(self) -> Path:
        return self.files.with_name(self.files.name + ".fn.pkl")

    @property
    def result_file(self) -> Path:
        return self.files.with_name(self.files.name + ".result.pkl")

    def remove_files(self) -> None:
        """Drop the call and result files (kept when the task failed, to look at)."""
        for path in (self.fn_file, self.result_file):
            path.unlink(missing_ok=True)
