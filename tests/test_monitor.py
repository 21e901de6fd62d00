"""parsl_poncho.monitor: task figures from runner results, on futures and AppFutures, in the
log and the per-app table; thread-pool variables that follow cores; the default disk."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

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
