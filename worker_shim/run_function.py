"""Run one cloudpickled function call on a worker and write its outcome to a result file.

Usage:
    python run_function.py FN.pkl RESULT.pkl

FN.pkl holds ``cloudpickle.dumps((fn, args, kwargs))``. The runner calls ``fn(*args, **kwargs)``
and writes RESULT.pkl (atomically: a temporary file in the same directory, then rename) holding a
cloudpickled dict, one of:

    {"status": "ok", "value": <return value>}
    {"status": "raised", "exc_type": "module.QualName", "message": str(exc),
     "traceback": <formatted traceback, runner frames left out>,
     "frames": [(file, line, function, source line or None), ...] of the last exception,
     "chain_text": <the traceback text of the exceptions chained before it>,
     "exc_only": <its final "Type: message" lines>,
     "exception": <the exception object, or None when it does not survive pickling>}

A return value that cannot be pickled is reported as "raised" (exc_type
"_pickle.PicklingError"), since the function's result cannot reach the caller.

Exit codes:
    0   the function returned; RESULT.pkl holds {"status": "ok", ...}
    10  the function raised; RESULT.pkl holds {"status": "raised", ...}
    20  the runner itself failed (bad arguments, FN.pkl unreadable or not loadable here, e.g. a
        module missing from the environment, RESULT.pkl not writable); stderr says why and no
        RESULT.pkl is written

Standard library and cloudpickle only: this runs inside the shipped environment, which must not
need parsl or parsl_poncho.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from typing import Any

EXIT_OK = 0
EXIT_RAISED = 10
EXIT_RUNNER_FAILED = 20


class RunnerError(Exception):
    """The runner cannot do its job; the message says what and why."""


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.`` kept, so it is never ambiguous)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def load_call(path: str) -> tuple[Any, tuple, dict]:
    """Read and unpickle ``(fn, args, kwargs)`` from ``path``."""
    import cloudpickle

    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as exc:
        raise RunnerError(f"cannot read the function file {path!r}: {exc}") from exc
    try:
        call = cloudpickle.loads(payload)
    except ImportError as exc:
        raise RunnerError(
            f"cannot load the function from {path!r}: {type(exc).__name__}: {exc}; the shipped "
            "environment lacks a module the function or its arguments need"
        ) from exc
    except Exception as exc:
        raise RunnerError(
            f"cannot load the function from {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(call, tuple) and len(call) == 3 and callable(call[0])):
        raise RunnerError(
            f"{path!r} does not hold cloudpickle.dumps((fn, args, kwargs)): "
            f"got {type(call).__name__}"
        )
    fn, args, kwargs = call
    return fn, tuple(args or ()), dict(kwargs or {})


def survives_pickling(obj: Any) -> bool:
    """Whether ``obj`` can be pickled and unpickled again (exceptions often cannot)."""
    import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(obj))
    except Exception:
        return False
    return True


def describe_exception(exc: BaseException, *, skip_frames: int = 0) -> dict[str, Any]:
    """The "raised" result for ``exc``; ``skip_frames`` drops the runner's own frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    last = "".join(traceback.format_exception(type(exc), exc, tb, chain=False))
    return {
        "status": "raised",
        "exc_type": qualified_name(type(exc)),
        "message": str(exc),
        "traceback": text,
        # for the submit side, which has the source of code pickled by value
        "frames": [(f.filename, f.lineno, f.name, f.line or None)
                   for f in traceback.extract_tb(tb)],
        "chain_text": text[:-len(last)] if text.endswith(last) else "",
        "exc_only": "".join(traceback.format_exception_only(type(exc), exc)),
        "exception": exc if survives_pickling(exc) else None,
    }


def call_function(fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Call ``fn`` and turn the outcome (value or exception) into a result dict."""
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt belong to the task
        return describe_exception(exc, skip_frames=1)
    return {"status": "ok", "value": value}


def serialize_result(result: dict[str, Any]) -> tuple[bytes, str]:
    """Pickle ``result``; an unpicklable return value becomes a "raised" result.

    Returns the bytes and the status they hold.
    """
    import pickle

    import cloudpickle

    try:
        return cloudpickle.dumps(result), result["status"]
    except Exception as exc:
        if result.get("status") == "ok":
            value = result.get("value")
            error = pickle.PicklingError(
                f"the function returned a {qualified_name(type(value))} that cannot be "
                f"pickled: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            fallback = {
                "status": "raised",
                "exc_type": qualified_name(type(error)),
                "message": str(error),
                "traceback": "".join(traceback.format_exception_only(type(error), error)),
                "exception": error if survives_pickling(error) else None,
            }
        else:
            fallback = dict(result, exception=None)
        try:
            return cloudpickle.dumps(fallback), fallback["status"]
        except Exception as exc2:
            raise RunnerError(f"cannot pickle the result: {type(exc2).__name__}: {exc2}") from exc2


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise RunnerError(f"cannot write the result file {path!r}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)  # no fsync: readers are on this node, after this process exits
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunnerError(f"cannot write the result file {path!r}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """Run ``run_function.py FN.pkl RESULT.pkl``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("run_function.py: usage: python run_function.py FN.pkl RESULT.pkl", file=sys.stderr)
        return EXIT_RUNNER_FAILED
    fn_path, result_path = argv
    try:
        fn, args, kwargs = load_call(fn_path)
        data, status = serialize_result(call_function(fn, args, kwargs))
        write_atomically(result_path, data)
    except RunnerError as exc:
        print(f"run_function.py: error: {exc}", file=sys.stderr)
        return EXIT_RUNNER_FAILED
    except ModuleNotFoundError as exc:  # cloudpickle itself is missing
        print(
            f"run_function.py: error: {exc}; the environment must contain cloudpickle",
            file=sys.stderr,
        )
        return EXIT_RUNNER_FAILED
    return EXIT_OK if status == "ok" else EXIT_RAISED


if __name__ == "__main__":
    sys.exit(main())
