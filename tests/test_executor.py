"""Tests of PonchoExecutor: construction first, then real Parsl runs on local Work Queue workers."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import threading
import time
from concurrent.futures import Future

import pytest
from tools import require

from parsl_poncho.errors import (
    BuildError,
    EnvVerificationError,
    ExecutorError,
    TaskSerializationError,
)
from parsl_poncho.executor import PonchoExecutor
from parsl_poncho.options import WorkerOptions
from parsl_poncho.tasks import env_hash_of

# -- construction ---------------------------------------------------------------------------


def test_env_hash_of_reads_executor_and_app_futures():
    fu: Future = Future()
    fu.parsl_poncho_env_hash = "abc"
    assert env_hash_of(fu) == "abc"

    class App:
        def __init__(self):
            self.task_record = {"exec_fu": fu}

        def __getattr__(self, name):  # like AppFuture: any attribute "exists"
            return Future()

    assert env_hash_of(App()) == "abc"
    assert env_hash_of(Future()) is None


def test_constructor_defaults_and_repr():
    from parsl.providers import LocalProvider
    from parsl.utils import RepresentationMixin

    a, b = PonchoExecutor(), PonchoExecutor()
    assert isinstance(a.provider, LocalProvider) and a.provider is not b.provider
    RepresentationMixin._validate_repr = True
    try:
        assert "PonchoExecutor(" in repr(a)
    finally:
        RepresentationMixin._validate_repr = False
    with pytest.raises(ExecutorError, match="project_password_file"):
        PonchoExecutor(project_password_file="/nonexistent/pw")


def test_password_file_with_tilde_becomes_absolute(tmp_path, monkeypatch):
    """Workers may start in another directory: the path they get must not depend on it."""
    (tmp_path / "wq.pw").write_text("secret\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert PonchoExecutor(project_password_file="~/wq.pw").project_password_file == str(
        tmp_path / "wq.pw"
    )
    monkeypatch.chdir(tmp_path)
    assert PonchoExecutor(project_password_file="wq.pw").project_password_file == str(
        tmp_path / "wq.pw"
    )
    with pytest.raises(ExecutorError, match="'~/'"):
        PonchoExecutor(project_password_file="~/")


def test_submit_before_start_is_an_error():
    with pytest.raises(ExecutorError, match="before start"):
        PonchoExecutor().submit(len, {}, [])


# -- real runs ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def env_cache(tmp_path_factory, seeded_channel, build_cache_dir):
    """(cache dir, BuildOptions) shared by every executor test: each spec builds once."""
    from parsl_poncho.build import BuildOptions

    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=build_cache_dir)
    return tmp_path_factory.mktemp("env-cache"), options


def _executor(env_cache, *, builder=None, analyzer=None, **kw) -> PonchoExecutor:
    from parsl.providers import LocalProvider

    from parsl_poncho.store import EnvStore

    cache, options = env_cache
    store = EnvStore(cache, build_options=options, builder=builder)
    return PonchoExecutor(store=store, analyzer=analyzer,
                          provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1), **kw)


def _config(executor, run_dir, **kw):
    from parsl.config import Config

    return Config(executors=[executor], run_dir=str(run_dir), strategy="none", **kw)


def _workers_of_this_process() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "work_queue_worker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_python_bash_and_join_apps(env_cache, tmp_path):
    import parsl

    @parsl.python_app
    def add(a, b):
        return a + b

    @parsl.python_app
    def fail(msg):
        raise ValueError(msg)

    @parsl.bash_app
    def greet(name, stdout=None):
        return f"echo hello {name}"

    @parsl.join_app
    def add_three(a, b, c):
        return add(add(a, b), c)

    ex = _executor(env_cache)
    with parsl.load(_config(ex, tmp_path / "runinfo")):
        f = add(1, 2)
        assert f.result(timeout=300) == 3
        assert len(env_hash_of(f)) == 64
        assert [add(i, i).result(timeout=120) for i in range(3)] == [0, 2, 4]
        with pytest.raises(ValueError, match="boom") as info:
            fail("boom").result(timeout=120)
        assert "raise ValueError(msg)" in info.value.remote_traceback
        out = tmp_path / "greet.out"
        assert greet("poncho", stdout=str(out)).result(timeout=600) == 0
        assert out.read_text().strip() == "hello poncho"
        assert add_three(1, 2, 3).result(timeout=120) == 6
        port = ex._manager.port
        manager = ex._manager.process
    assert not manager.is_alive()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port))


@pytest.mark.slow
def test_build_failure_fails_exactly_the_tasks_needing_that_env(env_cache, tmp_path):
    import parsl

    from parsl_poncho.build import build_env

    def builder(spec, output, *, options=None, progress=None):
        if any(p.startswith("numpy") for p in spec.pip):
            raise BuildError("pip: no matching distribution for numpy (test)", step="pip",
                             package="numpy")
        return build_env(spec, output, options=options, progress=progress)

    @parsl.python_app
    def uses_numpy(n):
        import numpy

        return int(numpy.arange(n).sum())

    @parsl.python_app
    def plain(n):
        return n + 1

    ex = _executor(env_cache, builder=builder)
    with parsl.load(_config(ex, tmp_path / "runinfo")):
        bad = [uses_numpy(3) for _ in range(3)]
        good = [plain(i) for i in range(3)]
        assert [g.result(timeout=300) for g in good] == [1, 2, 3]
        for b in bad:
            with pytest.raises(BuildError, match="no matching distribution for numpy"):
                b.result(timeout=300)


@pytest.mark.slow
def test_verification_names_module_and_distribution(env_cache, tmp_path):
    import parsl

    from parsl_poncho.analyze import Analyzer

    class MissingModuleAnalyzer(Analyzer):
        """Claims the function also needs a module its env cannot have."""

        def analyze_call(self, func, *args, **kwargs):
            import dataclasses

            spec, req = super().analyze_call(func, *args, **kwargs)
            providers = {**req.providers, "no_such_module_xyz": "no-such-dist"}
            return spec, dataclasses.replace(req, providers=providers)

    @parsl.python_app
    def plain(n):
        return n

    ex = _executor(env_cache, analyzer=MissingModuleAnalyzer())
    with parsl.load(_config(ex, tmp_path / "runinfo")):
        futures = [plain(i) for i in range(2)]
        for f in futures:
            with pytest.raises(EnvVerificationError,
                               match=r"'no_such_module_xyz'.*distribution 'no-such-dist'"):
                f.result(timeout=300)


@pytest.mark.slow
def test_unpicklable_argument_fails_at_submission(env_cache, tmp_path):
    import parsl

    @parsl.python_app
    def show(x):
        return repr(x)

    ex = _executor(env_cache)
    with parsl.load(_config(ex, tmp_path / "runinfo")):
        with pytest.raises(TaskSerializationError, match=r"positional argument 0 \(lock"):
            show(threading.Lock()).result(timeout=60)
        assert show(1).result(timeout=300) == "1"


@pytest.mark.slow
def test_shutdown_leaves_nothing_and_a_second_executor_starts(env_cache, tmp_path):
    import parsl

    @parsl.python_app
    def pid():
        import os

        return os.getpid()

    before = set(_workers_of_this_process())
    for round_ in range(2):
        ex = _executor(env_cache)
        with parsl.load(_config(ex, tmp_path / f"run{round_}")):
            assert pid().result(timeout=300) > 0
            assert set(_workers_of_this_process()) - before
            manager = ex._manager.process
        assert not manager.is_alive()
        deadline = time.monotonic() + 30
        while set(_workers_of_this_process()) - before:
            assert time.monotonic() < deadline, "workers left behind"
            time.sleep(0.5)


@pytest.mark.slow
def test_monitoring_on(env_cache, tmp_path):
    require(importlib.util.find_spec("sqlalchemy") is not None,
            "sqlalchemy is missing (a locked test dependency: run `make setup`)")
    import parsl
    from parsl.monitoring import MonitoringHub

    @parsl.python_app
    def square(x):
        return x * x

    ex = _executor(env_cache)
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{tmp_path}/monitoring.db",
                        resource_monitoring_interval=1)
    with parsl.load(_config(ex, tmp_path / "runinfo", monitoring=hub)):
        assert square(7).result(timeout=900) == 49
    assert (tmp_path / "monitoring.db").exists()


@pytest.mark.slow
def test_lost_worker_is_retried_then_reported(env_cache, tmp_path):
    """A task that kills its worker every time: Work Queue retries, then a clear error."""
    import parsl
    from parsl.providers import LocalProvider

    from parsl_poncho.store import EnvStore

    @parsl.python_app
    def kill_my_worker():
        import os
        import signal

        pid = os.getppid()
        while pid > 1:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "work_queue_work":
                    os.kill(pid, signal.SIGKILL)
                    break
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        import time

        time.sleep(2)  # an orphan holding the worker's socket would delay noticing the loss

    cache, options = env_cache
    ex = PonchoExecutor(store=EnvStore(cache, build_options=options), max_retries=1,
                        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))
    workers = []
    with parsl.load(_config(ex, tmp_path / "runinfo")):
        fut = kill_my_worker()
        cmd = ["work_queue_worker", "-t", "60", "localhost", str(ex._manager.port)]
        deadline = time.monotonic() + 300
        while not fut.done() and time.monotonic() < deadline:
            if not any(w.poll() is None for w in workers):
                workers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
            time.sleep(0.5)
        with pytest.raises(ExecutorError, match="MAX_RETRIES|FORSAKEN|retried") as info:
            fut.result(timeout=10)
        assert "env " in str(info.value)
    for w in workers:
        if w.poll() is None:
            w.kill()
        w.wait()
    assert len(workers) >= 2


def test_worker_command_uses_chosen_port_and_options():
    ex = PonchoExecutor(address="head.example", workers=WorkerOptions(options="--cores 4"))
    assert ex._worker_command(9999) == "work_queue_worker --cores 4 head.example 9999"
    ex = PonchoExecutor(project_name="proj")
    assert ex._worker_command(9999).endswith("-M proj")
    with pytest.raises(ExecutorError, match=r"function_exec_mode is 'fast'; use one of"):
        PonchoExecutor(function_exec_mode="fast")  # type: ignore[arg-type]


def test_import_of_a_module_that_exists_nowhere_is_an_import_error(tmp_path):
    from parsl_poncho.analyze import Analyzer
    from parsl_poncho.errors import MissingModuleError, UnresolvedImportError

    def bad_import():
        import non_existent_module_xyz  # noqa: F401

    from parsl_poncho.learning import Learner

    ex = PonchoExecutor(analyzer=Analyzer())
    ex._learner = Learner(ex._make_analyzer, None)
    with pytest.raises(ImportError, match="non_existent_module_xyz") as info:
        ex._analyse(bad_import, (), {})
    assert isinstance(info.value, MissingModuleError)
    assert isinstance(info.value, UnresolvedImportError)


def test_verify_env_reports_module_and_distribution_with_a_fake_runner(tmp_path):
    import subprocess as sp

    from parsl_poncho.build.verify import verify_env

    calls = []

    def runner(cmd, **kw):
        calls.append(cmd)
        out = 'PONCHO-VERIFY {"cv2": "ModuleNotFoundError: No module named \'cv2\'"}\n'
        return sp.CompletedProcess(cmd, 0, stdout=out, stderr="")

    with pytest.raises(EnvVerificationError, match=r"'cv2'.*distribution 'opencv-python'") as info:
        verify_env(tmp_path / "env-ab.tar.gz", {"cv2": "opencv-python", "numpy": "numpy"},
                   env_hash="ab", poncho_run=tmp_path / "poncho_run", unpack_dir=tmp_path / "u",
                   sha256="ff", runner=runner)
    assert info.value.module == "cv2" and info.value.distribution == "opencv-python"
    assert calls[0][:3] == ["sh", str(tmp_path / "poncho_run"), "-e"]
    assert "-s" in calls[0] and calls[0][-2:] == ["cv2", "numpy"]


def test_verify_env_says_when_the_env_does_not_start(tmp_path):
    import subprocess as sp

    from parsl_poncho.build.verify import verify_env

    def runner(cmd, **kw):
        return sp.CompletedProcess(cmd, 65, stdout="", stderr="poncho_run: error: corrupt\n")

    with pytest.raises(EnvVerificationError, match=r"(?s)does not start.*status 65.*corrupt"):
        verify_env(tmp_path / "env-ab.tar.gz", {"numpy": "numpy"}, env_hash="ab",
                   poncho_run=tmp_path / "poncho_run", unpack_dir=tmp_path / "u", runner=runner)
