"""worker_shim/run_function.py: runs a cloudpickled call and writes the value or the exception,
with exit codes that tell "the function raised" from "the runner failed"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from parsl_poncho.shim import run_function_path

EXIT_OK, EXIT_RAISED, EXIT_RUNNER_FAILED = 0, 10, 20

# Defined as if in a script's __main__, so cloudpickle ships them by value (as on a real submit).
FUNCTIONS = '''
import os, sys

def add(x, y=1):
    return x + y

def fail(msg):
    helper(msg)

def helper(msg):
    raise ValueError(msg)

class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")

def raise_unpicklable():
    raise NeedsTwoArgs(1, 2)

class LockedError(Exception):
    def __init__(self):
        import threading
        super().__init__("has a lock")
        self.lock = threading.Lock()

def raise_with_lock():
    raise LockedError()

def return_generator():
    return (i for i in range(3))

def exit_early():
    sys.exit(3)

def allocate_and_burn(mb, cpu_seconds):
    import time
    begin = time.process_time()
    block = bytearray(mb * 2**20)
    block[::4096] = b"x" * len(range(0, len(block), 4096))  # touch every page
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass
    return time.process_time() - begin  # allocating costs CPU too (page faults)

def burn_in_child(cpu_seconds):
    import subprocess
    code = ("import time; s = time.process_time()\\n"
            f"while time.process_time() - s < {cpu_seconds}: pass")
    subprocess.run([sys.executable, "-c", code], check=True)

def sleep_then_fail(seconds):
    import time
    time.sleep(seconds)
    raise RuntimeError("slept")

def chatty():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    return os.getpid()
'''


@pytest.fixture(scope="module")
def fns() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(FUNCTIONS, "<user-script>", "exec"), namespace)
    return namespace


def run(tmp_path: Path, fn: Any, *args: Any, **kwargs: Any):
    """Run the runner on (fn, args, kwargs); returns (process, result dict or None)."""
    fn_pkl = tmp_path / "fn.pkl"
    result_pkl = tmp_path / "result.pkl"
    fn_pkl.write_bytes(cloudpickle.dumps((fn, args, kwargs)))
    proc = subprocess.run(
        [sys.executable, str(run_function_path()), str(fn_pkl), str(result_pkl)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    result = cloudpickle.loads(result_pkl.read_bytes()) if result_pkl.exists() else None
    return proc, result


def test_returned_value(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["add"], 2, y=5)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert set(result.pop("resources")) == {"wall_time", "cpu_time", "memory"}
    assert result.pop("misses") == []
    assert result == {"status": "ok", "value": 7}


def test_resources_of_a_call_that_allocates_and_burns(tmp_path: Path,
                                                      fns: dict[str, Any]) -> None:
    _, idle = run(tmp_path, fns["add"], 1)
    baseline = idle["resources"]
    # an add() call: well under a second of either, even on a loaded machine
    assert 0 <= baseline["wall_time"] < 0.5 and 0 <= baseline["cpu_time"] < 0.5
    assert 1 < baseline["memory"] < 200  # the interpreter with cloudpickle loaded
    proc, result = run(tmp_path, fns["allocate_and_burn"], 200, 0.5)
    assert proc.returncode == EXIT_OK, proc.stderr
    used, own_cpu = result["resources"], result["value"]
    assert used["memory"] - baseline["memory"] == pytest.approx(200, rel=0.2)
    assert used["cpu_time"] == pytest.approx(own_cpu, rel=0.2)
    assert used["cpu_time"] >= 0.5 * 0.95


def test_cpu_time_of_a_pure_burn(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["allocate_and_burn"], 0, 0.5)
    assert proc.returncode == EXIT_OK, proc.stderr
    used = result["resources"]
    assert used["cpu_time"] == pytest.approx(0.5, rel=0.2)
    # wall time covers the burn; the margin above is for a loaded machine's waits
    assert used["cpu_time"] * 0.95 <= used["wall_time"] < used["cpu_time"] + 5.0


def test_cpu_time_includes_waited_for_children(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["burn_in_child"], 0.4)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert result["resources"]["cpu_time"] >= 0.4 * 0.9


def test_a_raised_result_carries_resources(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["sleep_then_fail"], 0.3)
    assert proc.returncode == EXIT_RAISED
    assert result["exc_type"] == "builtins.RuntimeError"
    used = result["resources"]
    assert 0.29 <= used["wall_time"] < 2.0  # the 0.3 s sleep, plus a loaded machine's wake-up
    assert used["cpu_time"] < 0.1 and used["memory"] > 1


def test_an_unpicklable_value_keeps_its_resources(tmp_path: Path, fns: dict[str, Any]) -> None:
    _, result = run(tmp_path, fns["return_generator"])
    assert result["status"] == "raised"
    assert result["resources"]["memory"] > 1


def test_measuring_costs_well_under_a_millisecond() -> None:
    import importlib.util
    import timeit

    spec = importlib.util.spec_from_file_location("run_function_under_test", run_function_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n = 2000
    def noop() -> None:
        return None

    per_call = timeit.timeit(lambda: module.call_function(noop, (), {}), number=n) / n
    bare = timeit.timeit(lambda: {"status": "ok", "value": noop()}, number=n) / n
    assert per_call - bare < 1e-3, f"{(per_call - bare) * 1e6:.1f} us per task"


def test_raised_exception_with_remote_traceback(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["fail"], "boom")
    assert proc.returncode == EXIT_RAISED
    assert result["status"] == "raised"
    assert result["exc_type"] == "builtins.ValueError"
    assert result["message"] == "boom"
    assert isinstance(result["exception"], ValueError)
    assert str(result["exception"]) == "boom"
    tb = result["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in fail" in tb and "in helper" in tb and tb.rstrip().endswith("ValueError: boom")
    assert "run_function.py" not in tb  # the runner's own frames are left out


def test_exception_that_cannot_be_unpickled_is_none(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["raise_unpicklable"])
    assert proc.returncode == EXIT_RAISED
    assert result["exc_type"] == "__main__.NeedsTwoArgs"
    assert result["message"] == "1/2"
    assert result["exception"] is None
    assert "NeedsTwoArgs: 1/2" in result["traceback"]


def test_exception_that_cannot_be_pickled_is_none(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["raise_with_lock"])
    assert proc.returncode == EXIT_RAISED
    assert result["exc_type"] == "__main__.LockedError"
    assert result["exception"] is None


def test_unpicklable_return_value_is_reported_as_raised(
    tmp_path: Path, fns: dict[str, Any]
) -> None:
    proc, result = run(tmp_path, fns["return_generator"])
    assert proc.returncode == EXIT_RAISED
    assert result["exc_type"] == "_pickle.PicklingError" or result["exc_type"].endswith(
        "PicklingError"
    )
    assert "builtins.generator that cannot be pickled" in result["message"]


def test_system_exit_belongs_to_the_task(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["exit_early"])
    assert proc.returncode == EXIT_RAISED
    assert result["exc_type"] == "builtins.SystemExit"


def test_output_passes_through(tmp_path: Path, fns: dict[str, Any]) -> None:
    proc, result = run(tmp_path, fns["chatty"])
    assert proc.returncode == EXIT_OK
    assert proc.stdout == "to stdout\n" and proc.stderr == "to stderr\n"
    assert isinstance(result["value"], int)


def test_builtin_and_lambda(tmp_path: Path) -> None:
    proc, result = run(tmp_path, sorted, [3, 1, 2], reverse=True)
    assert (proc.returncode, result["value"]) == (EXIT_OK, [3, 2, 1])
    proc, result = run(tmp_path, lambda x: x * 2, 21)
    assert (proc.returncode, result["value"]) == (EXIT_OK, 42)


def test_result_is_written_atomically(tmp_path: Path, fns: dict[str, Any]) -> None:
    (tmp_path / "result.pkl").write_bytes(b"stale")
    proc, result = run(tmp_path, fns["add"], 1)
    assert proc.returncode == EXIT_OK
    assert result["value"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fn.pkl", "result.pkl"]


def runner(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(run_function_path()), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_wrong_arguments_are_a_runner_failure(tmp_path: Path) -> None:
    proc = runner(tmp_path, "only-one.pkl")
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "usage: python run_function.py FN.pkl RESULT.pkl" in proc.stderr


def test_missing_function_file(tmp_path: Path) -> None:
    proc = runner(tmp_path, "nope.pkl", "result.pkl")
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "cannot read the function file 'nope.pkl'" in proc.stderr
    assert not (tmp_path / "result.pkl").exists()


def test_garbage_function_file(tmp_path: Path) -> None:
    (tmp_path / "fn.pkl").write_bytes(b"not a pickle")
    proc = runner(tmp_path, "fn.pkl", "result.pkl")
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "cannot load the function from 'fn.pkl'" in proc.stderr


def test_wrong_payload_shape(tmp_path: Path) -> None:
    (tmp_path / "fn.pkl").write_bytes(cloudpickle.dumps({"fn": print}))
    proc = runner(tmp_path, "fn.pkl", "result.pkl")
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "does not hold cloudpickle.dumps((fn, args, kwargs))" in proc.stderr


def test_module_missing_in_environment(tmp_path: Path) -> None:
    # A function pickled by reference to a module the worker's env does not have.
    module_dir = tmp_path / "submit_side"
    module_dir.mkdir()
    (module_dir / "only_on_submit_host.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(module_dir))
    try:
        import only_on_submit_host  # type: ignore[import-not-found]

        payload = cloudpickle.dumps((only_on_submit_host.f, (), {}))
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("only_on_submit_host", None)
    (tmp_path / "fn.pkl").write_bytes(payload)
    proc = runner(tmp_path, "fn.pkl", "result.pkl")
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "No module named 'only_on_submit_host'" in proc.stderr
    assert "lacks a module the function or its arguments need" in proc.stderr


def test_unwritable_result_location(tmp_path: Path, fns: dict[str, Any]) -> None:
    (tmp_path / "fn.pkl").write_bytes(cloudpickle.dumps((fns["add"], (1,), {})))
    proc = runner(tmp_path, "fn.pkl", str(tmp_path / "no-such-dir" / "result.pkl"))
    assert proc.returncode == EXIT_RUNNER_FAILED
    assert "cannot write the result file" in proc.stderr


def test_runner_imports_only_stdlib_and_cloudpickle() -> None:
    import ast

    tree = ast.parse(run_function_path().read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"cloudpickle"}


# -- the miss recorder ---------------------------------------------------------------------------


def test_misses_are_recorded_when_a_library_hides_the_import_error(tmp_path):
    def app():
        try:
            import poncho_missing_optional_dep  # noqa: F401
        except ImportError:
            raise RuntimeError("install the optional extra to use this") from None

    proc, report = run(tmp_path, app)
    assert proc.returncode == 10 and report["exc_type"] == "builtins.RuntimeError"
    assert report["misses"] == ["poncho_missing_optional_dep"]


def test_a_fallback_import_that_succeeds_is_recorded_and_harmless(tmp_path):
    def app():
        try:
            import poncho_fast_json as js  # noqa: F401
        except ImportError:
            import json as js
        return js.dumps([1])

    proc, report = run(tmp_path, app)
    assert proc.returncode == 0 and report["value"] == "[1]"
    assert report["misses"] == ["poncho_fast_json"]


def test_computed_and_relative_import_misses_name_absolute_modules(tmp_path):
    def app(name):
        import importlib

        for target in (name, ".poncho_nope_sub"):
            try:
                importlib.import_module(target, package="json")
            except ImportError:
                pass
        return "done"

    proc, report = run(tmp_path, app, "poncho_" + "computed_mod")
    assert proc.returncode == 0
    assert report["misses"] == ["poncho_computed_mod", "json.poncho_nope_sub"]


def test_namespace_packages_and_found_modules_are_not_misses(tmp_path):
    ns = tmp_path / "nsroot" / "poncho_ns_pkg"
    ns.mkdir(parents=True)
    (ns / "mod.py").write_text("VALUE = 5\n")

    def app(root):
        import sys

        sys.path.insert(0, root)
        import json  # noqa: F401

        import poncho_ns_pkg.mod  # a namespace package: no __init__.py

        return poncho_ns_pkg.mod.VALUE

    proc, report = run(tmp_path, app, str(tmp_path / "nsroot"))
    assert proc.returncode == 0 and report["value"] == 5
    assert report["misses"] == []


def test_misses_while_loading_the_call_go_to_stderr(tmp_path):
    import types

    fake = types.ModuleType("poncho_only_on_submit_side")
    exec("def f():\n    return 1\n", fake.__dict__)
    fake.f.__module__ = "poncho_only_on_submit_side"
    sys.modules["poncho_only_on_submit_side"] = fake
    try:
        payload = cloudpickle.dumps((fake.f, (), {}))  # by reference: the module must import
    finally:
        del sys.modules["poncho_only_on_submit_side"]
    (tmp_path / "fn.pkl").write_bytes(payload)
    proc = subprocess.run([sys.executable, str(run_function_path()), "fn.pkl", "result.pkl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 20
    assert "run_function.py: modules not found: poncho_only_on_submit_side" in proc.stderr
    assert not (tmp_path / "result.pkl").exists()
