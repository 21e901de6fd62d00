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

Both carry "misses": the modules the call (or unpickling it) tried and failed to import, in
order, whether or not the code caught the ImportError. When the call cannot be loaded (exit
20), they are named on stderr instead: "run_function.py: modules not found: a, b".

A return value that cannot be pickled is reported as "raised" (exc_type
"_pickle.PicklingError"), since the function's result cannot reach the caller.

Both carry what the call used, measured by the OS (getrusage, no sampling; ~30 us a task):

    "resources": {"wall_time": s, "cpu_time": s, "memory": MB}

wall_time and cpu_time (user + system, of this process and of the children it waited for)
cover the call fn(*args, **kwargs) only, not unpickling or writing the result. memory is
the peak resident set of this process during the call (Linux VmHWM, reset when the call
starts; elsewhere ru_maxrss) or of its largest waited-for child, so it includes the
interpreter's baseline (~10-20 MB; in a function server's forked child, the server's
preloaded heap it shares).

Thread pools: the executor sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
NUMEXPR_NUM_THREADS and VECLIB_MAXIMUM_THREADS to the task's cores (unless the user set
them). A fresh Python (regular mode) sizes its pools from them when numpy & co. load. A
library a function server imported before the fork has sized its pool already, from the
server's environment: call_process.py resizes BLAS and OpenMP pools with threadpoolctl before
this runner starts, when the task's variables differ (and the environment has threadpoolctl).

Memory: when PARSL_PONCHO_LIMIT_MEMORY=1 (the executor sets it for apps it right-sizes) and
Work Queue set MEMORY (MB, the task's allocation), the growth of this process's data segment
(RLIMIT_DATA, soft) is capped at MEMORY minus its resident memory when the call is loaded, so a
call that needs more than its allocation gets a MemoryError, which the executor retries with
more memory. (RLIMIT_DATA counts writable private mappings: address space that BLAS libraries
reserve untouched is counted too, RLIMIT_AS would count all of it.) A function server's child
applies it too: it runs main() with the client's environment.

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
import time
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


def usage_now() -> tuple[float, float, float]:
    """(wall clock, CPU seconds of this process and its waited-for children, peak RSS in MB)."""
    try:
        import resource
    except ImportError:  # not POSIX: wall time only
        return time.perf_counter(), 0.0, 0.0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    peak = max(_peak_rss_kb() or me.ru_maxrss, kids.ru_maxrss)  # KiB on Linux, bytes on macOS
    mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return time.perf_counter(), cpu, mb


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux): ru_maxrss keeps the peak of the process this
    one was forked from (the worker, a test runner, a function server) even across exec."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_kb() -> int:
    """VmHWM of this process image in KiB (since reset_peak_rss), or 0 where unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def resources_between(start: tuple[float, float, float],
                      end: tuple[float, float, float]) -> dict[str, float]:
    """The "resources" entry of a result, from two :func:`usage_now` readings."""
    return {"wall_time": round(end[0] - start[0], 6), "cpu_time": round(end[1] - start[1], 6),
            "memory": round(end[2], 1)}


def call_function(fn: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Call ``fn`` and turn the outcome (value or exception) into a result dict."""
    reset_peak_rss()
    start = usage_now()
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt belong to the task
        used = resources_between(start, usage_now())
        return {**describe_exception(exc, skip_frames=1), "resources": used}
    return {"status": "ok", "value": value, "resources": resources_between(start, usage_now())}


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
                "resources": result.get("resources"),
                "misses": result.get("misses", []),
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


def limit_memory(environ: Any = None) -> int | None:
    """Apply the memory limit described in the header; returns it in bytes, or None."""
    environ = os.environ if environ is None else environ
    if environ.get("PARSL_PONCHO_LIMIT_MEMORY") != "1":
        return None
    try:
        import resource

        allowed = int(float(environ.get("MEMORY", ""))) * 2**20
        with open("/proc/self/statm") as f:  # pages: size resident shared text lib data dt
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        rss, data = int(fields[1]) * page, int(fields[5]) * page
        if allowed <= 0:
            return None
        limit = data + max(0, allowed - rss)
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ImportError, OSError, ValueError, IndexError):
        return None  # not Linux, or no usable MEMORY: run unlimited, as before
    return limit


class MissRecorder:
    """A finder at the end of ``sys.meta_path``: it sees exactly the imports no finder found.

    It finds nothing itself, so imports behave as without it; the names it saw come back
    with the result (``misses``), also when a library caught the ImportError and raised its
    own error, so the submit side can add what was missing and run the task again.
    """

    limit = 100

    def __init__(self) -> None:
        self.misses: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name not in self.misses and len(self.misses) < self.limit:
            self.misses.append(name)
        return None

    def __enter__(self) -> MissRecorder:
        sys.meta_path.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def main(argv: list[str] | None = None) -> int:
    """Run ``run_function.py FN.pkl RESULT.pkl``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("run_function.py: usage: python run_function.py FN.pkl RESULT.pkl", file=sys.stderr)
        return EXIT_RUNNER_FAILED
    fn_path, result_path = argv
    recorder = MissRecorder()
    try:
        import cloudpickle  # noqa: F401 - before recording: its own import probes are not misses

        limit_memory()
        with recorder:
            fn, args, kwargs = load_call(fn_path)
            result = call_function(fn, args, kwargs)
        data, status = serialize_result({**result, "misses": recorder.misses})
        write_atomically(result_path, data)
    except RunnerError as exc:
        print(f"run_function.py: error: {exc}", file=sys.stderr)
        if recorder.misses:  # read by the submit side, which may add them and retry
            print(f"run_function.py: modules not found: {', '.join(recorder.misses)}",
                  file=sys.stderr)
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
