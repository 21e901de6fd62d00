"""examples/configs/slurm.py on a real one-node Slurm cluster: what users copy is what CI runs.

The cluster (tests/slurm_cluster.py) is started for the test and stopped by pid afterwards.
The workflow loads the example's ``make_config`` pointed at the local partition and checks
that its tasks ran inside a Slurm job of that config's provider, in the shipped env, and that
the block was cancelled at shutdown.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import parsl
import pytest
from slurm_cluster import SlurmCluster, running_cluster
from tools import require, require_tool

from parsl_poncho import EnvOptions

SLURM_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "configs" / "slurm.py"


@pytest.fixture()
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmCluster]:
    """A one-node cluster; SLURM_CONF points at it for sbatch/squeue/scancel run by Parsl."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        require_tool(tool)
    require(os.geteuid() == 0, "a one-node Slurm cluster needs root (slurmd runs as root)")
    with running_cluster(tmp_path / "slurm") as cluster:
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


def load_example() -> ModuleType:
    """examples/configs/slurm.py as a user's script imports it."""
    spec = importlib.util.spec_from_file_location("slurm_example_config", SLURM_EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@parsl.python_app
def where_am_i(i: int) -> tuple[int, str | None, str | None, str]:
    import os
    import sys

    return (i * i, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_PARTITION"),
            sys.prefix)


def test_example_imports_as_users_copy_it() -> None:
    example = load_example()
    provider = example.config.executors[0].provider  # `from slurm import config`
    assert (provider.partition, provider.account) == ("compute", "my-allocation")
    mine = example.make_config(partition="short", account=None, cores_per_node=8).executors[0]
    assert (mine.provider.partition, mine.provider.account) == ("short", None)
    assert mine.workers.options == "--cores 8 --memory 120000"
    assert mine.sizing.scaling_cores_per_worker == 8


@pytest.mark.slow
def test_example_config_runs_tasks_in_slurm_jobs(slurm: SlurmCluster, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 build_options) -> None:
    monkeypatch.setenv("PARSL_PONCHO_CACHE", str(tmp_path / "cache"))
    worker_cache = tmp_path / "worker-cache"
    config = load_example().make_config(
        partition=slurm.partition,
        account=None,
        address="127.0.0.1",
        port=0,
        cores_per_node=slurm.cpus,
        memory_per_node_mb=4000,
        max_blocks=1,
        walltime="00:10:00",
        worker_init="",
        worker_cache_dir=str(worker_cache),
        run_dir=str(tmp_path / "runinfo"),
        # offline: python and pip from the session's seeded channel, warm package cache
        build_options=build_options,
        envs=EnvOptions(seed_channel=False),
    )
    executor = config.executors[0]
    with parsl.load(config):
        # a cold build, then a block (another if the first fails: Parsl polls every 60 s)
        results = [f.result(timeout=600) for f in [where_am_i(i) for i in range(4)]]
        submitted = set(executor.provider.resources)

    assert [r[0] for r in results] == [0, 1, 4, 9]
    job_ids = {r[1] for r in results}
    assert None not in job_ids, results
    assert job_ids <= submitted, (job_ids, submitted)
    assert {r[2] for r in results} == {slurm.partition}
    for *_, prefix in results:
        assert Path(prefix).is_relative_to(worker_cache), prefix
        assert not Path(prefix).is_relative_to(sys.base_prefix), prefix
    assert _queue_after_drain(slurm) == []
    for job_id in job_ids:  # cleanup cancelled the block that ran the tasks: no walltime left
        job = _job(slurm, job_id)
        assert job["JobState"] == "CANCELLED", _report(job, tmp_path)
    # A block that ran no task ended on its own and Parsl submitted another (CI once saw a first
    # block FAILED with the tasks in a second one; a first submit that fails gives exactly that).
    for job_id in submitted - job_ids:
        job = _job(slurm, job_id)
        assert job["JobState"] in {"FAILED", "CANCELLED", "COMPLETED"}, _report(job, tmp_path)


def _job(slurm: SlurmCluster, job_id: str) -> dict[str, str]:
    """A finished job's fields, which slurmctld remembers for MinJobAge (300 s) after its end."""
    shown = slurm.run("scontrol", "show", "job", job_id).stdout
    fields = dict(re.findall(r"\b(\w+)=(\S*)", shown))
    assert "JobState" in fields, shown
    return fields


def _report(job: dict[str, str], tmp_path: Path) -> str:
    """A job's fields and what the blocks printed, for a failing assertion."""
    printed = "\n".join(p.read_text(errors="replace")
                        for p in sorted((tmp_path / "runinfo").rglob("*.std*")))
    return f"{job}\n{printed}"


def _queue_after_drain(slurm: SlurmCluster, timeout: float = 60.0) -> list[str]:
    """squeue once the cancelled jobs left the completing state (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while (queue := slurm.queue()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return queue
