"""Tests of parsl_poncho.tasks: what crosses to a worker and back for one task."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import cloudpickle
import pytest

from parsl_poncho.errors import RemoteTaskError, TaskSerializationError
from parsl_poncho.shim import run_function_path
from parsl_poncho.tasks import (
    app_name,
    remote_exception,
    serialize_call,
    staged_files,
    unwrap_error_wrapper,
    wq_resources,
)


def test_serialize_call_names_the_unpicklable_argument():
    lock = threading.Lock()
    with pytest.raises(TaskSerializationError, match=r"keyword argument 'guard' \(lock"):
        serialize_call(len, ([1],), {"guard": lock})
    with pytest.raises(TaskSerializationError, match=r"positional argument 1 \(lock"):
        serialize_call(len, (1, lock), {})


def test_serialize_call_names_an_unpicklable_function():
    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(TaskSerializationError, match=r"function 'uses_lock'") as info:
        serialize_call(uses_lock, (), {})
    assert isinstance(info.value, TypeError)


def test_wq_resources_defaults_to_one_core_and_ignores_unknown_keys(caplog):
    assert wq_resources({}) == {"cores": 1}
    assert wq_resources({}, default_cores=2) == {"cores": 2}
    spec = {"cores": 2, "memory": 100, "disk": 10, "gpus": 0, "priority": 5,
            "running_time_min": 3}
    assert wq_resources(spec) == spec
    assert wq_resources({"cpus": 4, "memory": 1}) == {"memory": 1, "cores": 1}
    assert "cpus" in caplog.text


def test_staged_files_stage_relative_paths_only():
    from parsl.data_provider.files import File

    ins, outs = staged_files(
        (File("in.txt"), File("/abs/in.txt")),
        {"outputs": [File("out.txt"), File("/abs/out.txt")], "stdout": "log.out",
         "stderr": ("/abs/err", "w")},
    )
    assert [f.remote for f in ins] == ["in.txt"]
    assert [f.remote for f in outs] == ["out.txt", "log.out"]


def test_remote_exception_keeps_type_and_traceback():
    exc = remote_exception({"status": "raised", "exception": KeyError("k"),
                            "traceback": "Traceback...\nKeyError: 'k'"}, env_hash="ab", host="n1")
    assert isinstance(exc, KeyError)
    assert exc.remote_traceback.endswith("KeyError: 'k'")
    assert any("env-ab on n1" in note for note in exc.__notes__)


def test_a_submit_host_file_the_worker_could_not_open_gets_a_note(tmp_path: Path):
    here = tmp_path / "pandarallel_input_x.pickle"
    here.write_bytes(b"")

    def notes(path: Path) -> str:
        exc = FileNotFoundError(2, "No such file or directory", str(path))
        return "\n".join(remote_exception({"status": "raised", "exception": exc,
                                            "traceback": "tb"}).__notes__)

    assert f"{here} is a file on the submit host, but the task ran on a worker" in notes(here)
    assert "use_memory_fs=False" in notes(here)
    assert "submit host" not in notes(tmp_path / "not-here")  # missing here too: no note


def test_remote_exception_stands_in_for_unpicklable_exception():
    exc = remote_exception({"status": "raised", "exception": None, "exc_type": "x.Weird",
                            "message": "odd", "traceback": "tb"})
    assert isinstance(exc, RemoteTaskError)
    assert "x.Weird: odd" in str(exc) and exc.remote_traceback == "tb"


def test_unwrap_error_wrapper_sees_through_parsl_wrap_error():
    from parsl.app.errors import wrap_error

    def f(x):
        return x

    assert unwrap_error_wrapper(wrap_error(f)) is f
    assert unwrap_error_wrapper(f) is f
    part = functools.partial(f, 1)
    assert unwrap_error_wrapper(part) is part


def test_app_name_sees_through_partials_and_wrappers():
    def fit(x):
        return x

    @functools.wraps(fit)
    def wrapper(*a):
        return fit(*a)

    assert app_name(fit) == "fit"
    assert app_name(functools.partial(fit, 1)) == "fit"
    assert app_name(wrapper) == "fit"


# -- remote tracebacks name the real file, line and source --------------------------------------

APP_SOURCE = '''\
def helper(x):
    if x > 1:
        raise ValueError(f"too big: {x}")
    return x


def app(x):
    y = x * 2
    return helper(y)
'''


def _run_on_a_worker_without_the_source(payload: bytes, source: Path, tmp_path: Path) -> dict:
    """Run the call through the real runner in another process while ``source`` is hidden."""
    (tmp_path / "fn.pkl").write_bytes(payload)
    hidden = source.with_suffix(".hidden")
    source.rename(hidden)
    try:
        proc = subprocess.run([sys.executable, str(run_function_path()), "fn.pkl", "result.pkl"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        hidden.rename(source)
    assert proc.returncode == 10, proc.stderr
    return cloudpickle.loads((tmp_path / "result.pkl").read_bytes())


def _load_by_value(path: Path) -> Callable:
    namespace: dict = {"__name__": "__main__"}  # pickled by value, as apps in scripts are
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["app"]


def test_remote_traceback_names_file_line_and_source_of_code_pickled_by_value(tmp_path: Path):
    source = tmp_path / "flow.py"
    source.write_text(APP_SOURCE)
    app = _load_by_value(source)
    report = _run_on_a_worker_without_the_source(serialize_call(app, (3,), {}), source, tmp_path)
    worker_text = report["traceback"]
    assert "raise ValueError" not in worker_text  # the worker had no source to show
    exc = remote_exception(report)
    assert isinstance(exc, ValueError) and str(exc) == "too big: 6"
    tb = exc.remote_traceback
    assert f'File "{source}", line 9, in app\n    return helper(y)' in tb
    assert f'File "{source}", line 3, in helper\n    raise ValueError(f"too big: {{x}}")' in tb
    assert tb.rstrip().endswith("ValueError: too big: 6")
    assert "<dynamic-code>" not in tb


def test_plain_cloudpickle_would_lose_the_file_name(tmp_path: Path):
    # Why serialize_call pickles with its own pickler: cloudpickle >= 3.1.3 drops the name.
    source = tmp_path / "flow.py"
    source.write_text(APP_SOURCE)
    app = _load_by_value(source)
    plain = cloudpickle.loads(cloudpickle.dumps(app)).__code__.co_filename
    kept = cloudpickle.loads(serialize_call(app, (), {}))[0].__code__.co_filename
    assert kept == str(source)
    assert plain in (str(source), "<dynamic-code>")


def test_chained_remote_exceptions_keep_their_chain(tmp_path: Path):
    source = tmp_path / "flow.py"
    source.write_text(APP_SOURCE.replace("    return helper(y)", (
        "    try:\n        return helper(y)\n    except ValueError as e:\n"
        "        raise KeyError('wrapped') from e")))
    app = _load_by_value(source)
    report = _run_on_a_worker_without_the_source(serialize_call(app, (3,), {}), source, tmp_path)
    tb = remote_exception(report).remote_traceback
    assert "ValueError: too big: 6" in tb
    assert "direct cause of the following exception" in tb
    assert "raise KeyError('wrapped') from e" in tb
    assert tb.rstrip().endswith("KeyError: 'wrapped'")


def test_reports_without_frames_keep_the_worker_text():
    report = {"status": "raised", "traceback": "Traceback...\nValueError: x\n",
              "exception": ValueError("x")}
    assert remote_exception(report).remote_traceback == report["traceback"]
