"""parsl_poncho.monitor: task figures from runner results, on futures and AppFutures, in the
log and the per-app table; thread-pool variables that follow cores; the default disk."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from tools import require

import parsl_poncho
from parsl_poncho.monitor import (
    THREAD_VARS,
    Monitor,
    TaskResources,
    disk_for,
    resources_of,
    thread_env,
)

USED = {"wall_time": 2.0, "cpu_time": 3.0, "memory": 250.5}


def test_from_report_reads_the_runner_figures() -> None:
    used = TaskResources.from_report({"status": "ok", "resources": USED}, cores=2)
    assert used == TaskResources(wall_time=2.0, cpu_time=3.0, memory=250.5, cores=2)
    assert used.cpu_efficiency == pytest.approx(0.75)


@pytest.mark.parametrize("report", [{"status": "ok"}, {"resources": None},
                                    {"resources": {"wall_time": 1.0}},
                                    {"resources": {**USED, "memory": "lots"}}])
def test_from_report_without_good_figures_is_none(report: dict) -> None:
    assert TaskResources.from_report(report) is None


def test_cpu_efficiency_of_an_instant_task_is_zero() -> None:
    assert TaskResources(0.0, 0.0, 10.0).cpu_efficiency == 0.0


def observed(monitor: Monitor, app: str, cores: int, **figures: float) -> Future:
    fu: Future = Future()
    monitor.track(fu, app, {"cores": cores})
    monitor.observe(fu, "7", {"status": "ok", "resources": {**USED, **figures}})
    return fu


def test_resources_of_an_executor_future_and_an_app_future() -> None:
    fu = observed(Monitor(), "f", 2)
    expected = TaskResources(2.0, 3.0, 250.5, cores=2)
    assert resources_of(fu) == expected
    app_future = SimpleNamespace(task_record={"exec_fu": fu})
    assert resources_of(app_future) == expected


def test_resources_of_an_unmeasured_task_is_none() -> None:
    assert resources_of(Future()) is None
    assert resources_of(SimpleNamespace(task_record={"exec_fu": None})) is None
    monitor, fu = Monitor(), Future()
    monitor.track(fu, "f", {"cores": 1})
    assert monitor.observe(fu, "1", {"status": "ok"}) is None
    assert resources_of(fu) is None and monitor.usage() == {}


def test_each_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="parsl_poncho.monitor"):
        observed(Monitor(), "simulate", 2)
    assert "task 7 (simulate) used 2.000 s wall, 3.000 s CPU, 250.5 MB peak on 2 cores" in (
        caplog.text)


def test_per_app_table(caplog: pytest.LogCaptureFixture) -> None:
    monitor = Monitor("ex")
    observed(monitor, "fit", 1, wall_time=1.0, cpu_time=1.0, memory=100.0)
    observed(monitor, "fit", 1, wall_time=3.0, cpu_time=1.0, memory=300.0)
    observed(monitor, "io", 4, wall_time=2.0, cpu_time=2.0, memory=50.0)
    usage = monitor.usage()
    assert usage["fit"].tasks == 2 and usage["fit"].mean_wall_time == pytest.approx(2.0)
    assert usage["fit"].max_wall_time == 3.0 and usage["fit"].max_memory == 300.0
    assert usage["fit"].cpu_efficiency == pytest.approx(0.5)
    assert usage["io"].cpu_efficiency == pytest.approx(0.25)
    lines = monitor.table().splitlines()
    assert lines[0].split() == ["app", "tasks", "mean", "wall", "s", "max", "wall", "s",
                                "max", "memory", "MB", "CPU", "eff."]
    assert lines[1].split() == ["fit", "2", "2.000", "3.000", "300.0", "50%"]
    assert lines[2].split() == ["io", "1", "2.000", "2.000", "50.0", "25%"]
    with caplog.at_level(logging.INFO, logger="parsl_poncho.monitor"):
        monitor.log_summary()
    assert "ex: resources used per app:" in caplog.text and lines[1] in caplog.text


def test_no_summary_when_nothing_was_measured(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="parsl_poncho.monitor"):
        Monitor().log_summary()
    assert caplog.text == ""


def test_thread_vars_follow_cores() -> None:
    env = thread_env({"MY_VAR": "x"}, {"cores": 2}, host_env={})
    assert env == {"MY_VAR": "x", **{v: "2" for v in THREAD_VARS}}
    assert set(THREAD_VARS) == {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"}


def test_thread_vars_the_user_set_win() -> None:
    env = thread_env({"OMP_NUM_THREADS": "8"}, {"cores": 2},
                     host_env={"MKL_NUM_THREADS": "3"})
    assert env["OMP_NUM_THREADS"] == "8"  # the executor's env=
    assert "MKL_NUM_THREADS" not in env  # the submit host's: its environment decides
    assert env["OPENBLAS_NUM_THREADS"] == "2"


def test_thread_vars_read_this_hosts_environment_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMEXPR_NUM_THREADS", "5")
    assert "NUMEXPR_NUM_THREADS" not in thread_env({}, {"cores": 1})
    monkeypatch.delenv("NUMEXPR_NUM_THREADS")
    assert thread_env({}, {"cores": 1})["NUMEXPR_NUM_THREADS"] == "1"


def test_thread_vars_are_at_least_one() -> None:
    assert thread_env({}, {}, host_env={})["OMP_NUM_THREADS"] == "1"
    assert thread_env({}, {"cores": 0}, host_env={})["OMP_NUM_THREADS"] == "1"


def test_disk_for_adds_the_tarball_to_the_default_disk() -> None:
    assert disk_for({"cores": 1}, 100 * 2**20 + 1, 1024) == {"cores": 1, "disk": 101 + 1024}
    assert disk_for({"disk": 5}, 2**30, 1024) == {"disk": 5}
    assert disk_for({"cores": 1}, 2**30, None) == {"cores": 1}


def test_public_api() -> None:
    assert parsl_poncho.resources_of is resources_of
    assert parsl_poncho.TaskResources is TaskResources
    assert {"resources_of", "TaskResources"} <= set(parsl_poncho.__all__)


# -- end to end: a real PonchoExecutor on a local Work Queue worker ---------------------------


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory, seeded_channel, build_cache_dir):
    """(cache dir, BuildOptions): builds offline from the seeded channel."""
    from parsl_poncho.build import BuildOptions

    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=build_cache_dir)
    return tmp_path_factory.mktemp("env-cache"), options


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regular", "serverless"])
def test_resources_and_thread_vars_of_1_and_2_core_tasks(mode, env_cache, tmp_path, monkeypatch,
                                                         caplog):
    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from parsl_poncho.executor import PonchoExecutor
    from parsl_poncho.store import EnvStore

    require((__import__("os").cpu_count() or 1) >= 2, "a 2-core task needs a 2-core worker")
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)

    @parsl.python_app
    def allocate_and_burn(mb, cpu_seconds, parsl_resource_specification=None):
        import os
        import time

        begin = time.process_time()
        block = bytearray(mb * 2**20)
        block[::4096] = b"x" * len(range(0, len(block), 4096))  # touch every page
        start = time.process_time()
        while time.process_time() - start < cpu_seconds:
            pass
        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().decode(errors="replace")
        return {n: os.environ.get(n) for n in names}, time.process_time() - begin, parent

    cache, options = env_cache
    ex = PonchoExecutor(store=EnvStore(cache, build_options=options), function_exec_mode=mode,
                        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1))
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy="none")
    caplog.set_level(logging.INFO, logger="parsl_poncho.monitor")
    with parsl.load(config):
        idle = allocate_and_burn(0, 0)
        idle.result(timeout=600)
        baseline = resources_of(idle)
        assert baseline is not None and 1 < baseline.memory < 200
        futures = {cores: allocate_and_burn(200, 0.5,
                                            parsl_resource_specification={"cores": cores})
                   for cores in (1, 2)}
        for cores, fu in futures.items():
            threads, own_cpu, parent = fu.result(timeout=300)
            assert ("function_server.py" in parent) == (mode == "serverless"), parent
            assert threads == {v: str(cores) for v in THREAD_VARS}
            used = resources_of(fu)
            assert used is not None and used.cores == cores
            assert used.memory - baseline.memory == pytest.approx(200, rel=0.2)
            assert used.cpu_time == pytest.approx(own_cpu, rel=0.2) and used.cpu_time >= 0.475
            assert used.wall_time >= used.cpu_time * 0.95
        usage = ex._monitor.usage()["allocate_and_burn"]
        assert usage.tasks == 3 and usage.max_memory >= 200
    assert "(allocate_and_burn) used" in caplog.text
    table = caplog.text.split("resources used per app:\n", 1)[1]
    assert table.splitlines()[1].split()[:2] == ["allocate_and_burn", "3"]
