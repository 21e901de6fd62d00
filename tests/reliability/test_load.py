"""Load: many tasks over 4 Work Queue workers and 3 distinct environments, run by a real Parsl
script (the submit process): nothing lost, every result right; tasks per second and the peak
memory of the submit process go into the run's report.

Short (CI): a few hundred tasks. Long (``-m long``): 5,000.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tools import require_tool

from .conftest import record, start_workflow


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    "tasks", [pytest.param(300, id="short"), pytest.param(5000, id="long",
                                                         marks=pytest.mark.long)]
)
def test_many_tasks_over_four_workers_and_three_envs(tasks: int, tmp_path: Path,
                                                     seeded_channel: Path,
                                                     shared_pkg_cache: Path) -> None:
    require_tool("work_queue_worker")
    flow = start_workflow(tmp_path, seeded_channel, shared_pkg_cache, cache=tmp_path / "cache",
                          run_dir=tmp_path / "runinfo", tasks=tasks, workers=4)
    try:
        summary = flow.summary(timeout=3500)
    finally:
        flow.kill()
    record(f"load: {tasks} tasks, 4 workers, 3 envs", tasks=summary["tasks"],
           right=summary["right"], wrong=summary["wrong"], failed=summary["failed"],
           lost=summary["lost"], seconds=summary["seconds"],
           tasks_per_second=summary["tasks_per_second"],
           submit_peak_rss_mib=summary["peak_rss_mib"], builds=len(flow.builds()))
    assert summary["lost"] == 0 and summary["wrong"] == 0 and summary["failed"] == 0, summary
    assert summary["right"] == tasks
    assert len(summary["envs"]) == 3
    # the three envs differ only by local code: one base, built exactly once (the plain app's
    # env is that base), plus two code layers
    assert len(flow.builds()) == 1, "the 3 envs share one base, built exactly once"
    assert set(flow.builds()) <= set(summary["envs"])
