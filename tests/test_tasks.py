"""Tests of parsl_poncho.tasks: what crosses to a worker and back for one task."""

from __future__ import annotations

import functools
import threading

import pytest

from parsl_poncho.errors import RemoteTaskError, TaskSerializationError
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
