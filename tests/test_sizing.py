"""parsl_poncho.sizing: memory proposals, category messages, retries with more memory; end to
end on a real 2-core, 4000 MB Work Queue worker in both exec modes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest
from tools import require_tool

from parsl_poncho.monitor import TaskResources
from parsl_poncho.sizing import LIMIT_VAR, Sizer, propose_memory, ran_out_of_memory
from parsl_poncho.workqueue import CategoryToWq, TaskToWq, WqToTask


def test_propose_memory_margin_floor_and_cap() -> None:
    assert propose_memory(300.0) == 375  # 1.25 x
    assert propose_memory(100.0) == 164  # at least 64 MB above the peak
    assert propose_memory(300.4, margin=1.5, floor=0) == 451  # rounded up
    assert propose_memory(3900.0, cap=4000) == 4000
    assert propose_memory(3900.0, cap=0) == 4875


def sized_task(sizer: Sizer, category: str = "fit", memory: int | None = None) -> Future:
    fu: Future = Future()
    resources = {"cores": 1} if memory is None else {"cores": 1, "memory": memory}
    env = sizer.limit(fu, SimpleNamespace(category=category, resources=resources), {"A": "1"})
    fu.env = env  # type: ignore[attr-defined]
    return fu


def ended(memory_allocated: float = 2000, worker_memory: int = 4000, **kw: Any) -> WqToTask:
    return WqToTask(id=kw.pop("id", "1"), result=kw.pop("result", "SUCCESS"),
                    return_status=kw.pop("return_status", 0),
                    allocated={"cores": 1, "memory": memory_allocated, "disk": 1100},
                    worker_memory=worker_memory, **kw)


def used(memory: float) -> TaskResources:
    return TaskResources(wall_time=1.0, cpu_time=1.0, memory=memory)


def test_only_tasks_without_memory_are_sized() -> None:
    sizer = Sizer(True, send=lambda msg: None)
    assert sized_task(sizer).env == {"A": "1", LIMIT_VAR: "1"}
    assert sized_task(sizer, memory=500).env == {"A": "1"}
    assert sized_task(Sizer(False, send=lambda msg: None)).env == {"A": "1"}


def test_category_request_after_the_first_tasks_then_only_when_it_grows(caplog) -> None:
    sent: list[Any] = []
    sizer = Sizer(True, send=sent.append, first_tasks=3)
    for memory in (250.0, 310.0):
        fu = sized_task(sizer)
        sizer.observe(ended(), fu, used(memory))
        assert fu.parsl_poncho_allocated == {"cores": 1, "memory": 2000, "disk": 1100}
    assert sent == [] and sizer.requested("fit") == 0
    with caplog.at_level(logging.INFO, logger="parsl_poncho.sizing"):
        sizer.observe(ended(), sized_task(sizer), used(300.0))
    assert sent == [CategoryToWq("fit", {"memory": 388})]  # 310 x 1.25, rounded up
    assert sizer.requested("fit") == 388
    assert "category 'fit': memory request 388 MB (largest peak 310.0 MB in 3 tasks)" in (
        caplog.text)
    sizer.observe(ended(388), sized_task(sizer), used(320.0))  # within 10%: no message
    assert len(sent) == 1
    sizer.observe(ended(388), sized_task(sizer), used(400.0))  # above the request
    assert sent[-1] == CategoryToWq("fit", {"memory": 500})
    assert sent[-1].id == "category:fit"


def test_unsized_and_unmeasured_tasks_do_not_count() -> None:
    sent: list[Any] = []
    sizer = Sizer(True, send=sent.append, first_tasks=1)
    sizer.observe(ended(), sized_task(sizer, memory=500), used(300.0))
    sizer.observe(ended(), sized_task(sizer), None)
    assert sent == []


def test_request_capped_at_the_largest_worker() -> None:
    sent: list[Any] = []
    sizer = Sizer(True, send=sent.append, first_tasks=1)
    sizer.observe(ended(worker_memory=1000), sized_task(sizer), used(900.0))
    assert sent == [CategoryToWq("fit", {"memory": 1000})]


def task_msg(tmp_path: Path, **env: str) -> TaskToWq:
    result = tmp_path / "result.pkl"
    result.write_bytes(b"old")
    return TaskToWq(id="1", command="x", category="fit", inputs=(), outputs=(),
                    result_file=str(result), resources={"cores": 1, "disk": 1100},
                    env={"A": "1", **env})


def memory_error_report(memory: float = 399.0) -> dict[str, Any]:
    return {"status": "raised", "exc_type": "builtins.MemoryError", "exception": MemoryError(),
            "resources": {"wall_time": 0.1, "cpu_time": 0.1, "memory": memory}}


def test_ran_out_of_memory() -> None:
    assert ran_out_of_memory(ended(), memory_error_report())
    assert ran_out_of_memory(ended(result="RESOURCE_EXHAUSTION"), {})
    assert ran_out_of_memory(ended(output="run_function.py: error: ... MemoryError"), {})
    assert not ran_out_of_memory(ended(), {"status": "raised", "exc_type": "builtins.KeyError"})
    assert not ran_out_of_memory(ended(result="SIGNAL"), {})


def test_retry_doubles_the_memory_up_to_the_largest_worker(tmp_path: Path) -> None:
    sent: list[Any] = []
    sizer = Sizer(True, send=sent.append, first_tasks=1)
    task = task_msg(tmp_path, **{LIMIT_VAR: "1"})
    sizer.observe(ended(), sized_task(sizer), used(300.0))
    assert sent == [CategoryToWq("fit", {"memory": 375})]
    assert sizer.retry(ended(375, result_file=task.result_file), memory_error_report(374),
                       {"1": task})
    assert not Path(task.result_file).exists()  # a stale result is never read for the retry
    assert sent[1] == CategoryToWq("fit", {"memory": 469})  # the failed attempt's 375 MB
    assert sent[2].resources == {"cores": 1, "disk": 1100, "memory": 750}
    assert sent[2].env == task.env and sent[2].id == "1"
    assert sizer.retry(ended(3000, worker_memory=4000), memory_error_report(2999), {"1": task})
    assert sent[-1].resources["memory"] == 4000


def test_no_retry_past_the_largest_worker_and_a_note_says_why(tmp_path: Path) -> None:
    sent: list[Any] = []
    sizer = Sizer(True, send=sent.append)
    task = task_msg(tmp_path, **{LIMIT_VAR: "1"})
    report = memory_error_report(3999)
    assert not sizer.retry(ended(4000, worker_memory=4000), report, {"1": task})
    assert sent == []
    assert "ran out of its 4000 MB and no connected worker has more (largest: 4000 MB)" in (
        report["exception"].__notes__[0])


def test_no_retry_for_unsized_tasks_other_failures_or_when_off(tmp_path: Path) -> None:
    sent: list[Any] = []
    sized = task_msg(tmp_path, **{LIMIT_VAR: "1"})
    assert not Sizer(True, sent.append).retry(ended(), memory_error_report(), {"1": task_msg(
        tmp_path)})
    assert not Sizer(True, sent.append).retry(ended(), {"exc_type": "builtins.KeyError"},
                                              {"1": sized})
    assert not Sizer(False, sent.append).retry(ended(), memory_error_report(), {"1": sized})
    assert not Sizer(True, sent.append).retry(ended(), memory_error_report(), {})
    assert sent == []


# -- end to end: a real PonchoExecutor and a 2-core, 4000 MB work_queue_worker ---------------


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory, seeded_channel, build_cache_dir):
    from parsl_poncho.build import BuildOptions

    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=build_cache_dir)
    return tmp_path_factory.mktemp("env-cache"), options


@contextlib.contextmanager
def worker(port: int, cache: Path, *options: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSL_PONCHO_")}
    env["PARSL_PONCHO_WORKER_CACHE"] = str(cache)
    proc = subprocess.Popen(["work_queue_worker", *options, "--timeout", "120", "localhost",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def exec_future(app_future: Any) -> Any:
    return app_future.task_record["exec_fu"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regular", "serverless"])
def test_an_app_without_a_spec_is_right_sized(mode, env_cache, tmp_path, caplog):
    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from parsl_poncho.executor import PonchoExecutor
    from parsl_poncho.store import EnvStore

    require_tool("work_queue_worker")

    @parsl.python_app
    def hold(mb, seconds):
        import os
        import time

        start = time.time()
        block = bytearray(mb * 2**20)
        block[::4096] = b"x" * len(range(0, len(block), 4096))  # touch every page
        time.sleep(seconds)
        return start, time.time(), os.environ.get("MEMORY")

    cache, options = env_cache
    ex = PonchoExecutor(store=EnvStore(cache, build_options=options), function_exec_mode=mode,
                        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy="none")
    caplog.set_level(logging.INFO, logger="parsl_poncho.sizing")
    with parsl.load(config), worker(ex._manager.port, tmp_path / "wcache", "--cores", "2",
                                    "--memory", "4000"):
        first = [hold(300, 0.1) for _ in range(3)]
        for fu in first:
            assert fu.result(timeout=600)[2] == "2000"  # Work Queue's share: half the worker
        peak = max(exec_future(fu).parsl_poncho_resources.memory for fu in first)
        requested = ex._sizer.requested("hold")
        assert 300 < peak < requested <= peak * 1.25 + 1

        pair = [hold(300, 8) for _ in range(2)]  # 8 s each: they overlap even if one starts late
        (s1, e1, m1), (s2, e2, m2) = (fu.result(timeout=300) for fu in pair)
        assert m1 == m2 == str(requested)  # the worker ran them in what the category asks
        for fu in pair:  # as Work Queue reports it allocated them
            assert exec_future(fu).parsl_poncho_allocated["memory"] == requested
        assert max(s1, s2) < min(e1, e2), "the two tasks did not run at the same time"

        bigger = hold(2 * requested - 100, 0)  # over its allocation, under twice it
        assert bigger.result(timeout=300)[2] == str(2 * requested)
        assert exec_future(bigger).parsl_poncho_allocated["memory"] == 2 * requested
    assert f"ran out of its {requested} MB: sending it again with {2 * requested} MB" in (
        caplog.text)
    assert ex._sizer.requested("hold") > requested  # the category learnt the bigger peak


@pytest.mark.slow
def test_memory_error_past_the_largest_worker_says_why(env_cache, tmp_path):
    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from parsl_poncho.executor import PonchoExecutor
    from parsl_poncho.store import EnvStore

    require_tool("work_queue_worker")

    @parsl.python_app
    def grab(mb):
        return len(bytearray(mb * 2**20))

    cache, options = env_cache
    ex = PonchoExecutor(store=EnvStore(cache, build_options=options),
                        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy="none")
    with parsl.load(config), worker(ex._manager.port, tmp_path / "wcache", "--cores", "1",
                                    "--memory", "1100"):
        with pytest.raises(MemoryError) as info:
            grab(1500).result(timeout=600)
    assert "no connected worker has more (largest: 1100 MB)" in "".join(info.value.__notes__)


def test_result_of_a_message(tmp_path: Path) -> None:
    path = tmp_path / "result.pkl"
    path.write_bytes(cloudpickle.dumps({"status": "ok", "value": 3}))
    assert ended(result_file=str(path)).read_result() == {"status": "ok", "value": 3}
    assert ended().read_result() == {}


# -- the runner's side (worker_shim/run_function.py): the limit a sized task runs under -------


def run_limited(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    import sys

    shim = Path(__file__).resolve().parents[1] / "worker_shim"
    script = tmp_path / "probe.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(shim)!r})\n"
                      "import run_function\nprint(run_function.limit_memory())\n" + code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), **env}, timeout=60)


CODE = """
try:
    block = bytearray(300 * 2**20)
    block[::4096] = b"x" * len(range(0, len(block), 4096))
    print("300 MB ok")
    more = bytearray(200 * 2**20)
    print("500 MB ok")
except MemoryError:
    print("MemoryError")
"""


def test_a_sized_call_gets_memory_error_past_its_allocation(tmp_path: Path) -> None:
    out = run_limited(tmp_path, CODE, **{LIMIT_VAR: "1", "MEMORY": "400"})
    assert out.returncode == 0, out.stderr
    limit, *rest = out.stdout.split()
    assert int(limit) > 0 and " ".join(rest) == "300 MB ok MemoryError"


@pytest.mark.parametrize("env", [{"MEMORY": "400"}, {LIMIT_VAR: "1"},
                                 {LIMIT_VAR: "1", "MEMORY": "lots"}, {LIMIT_VAR: "1",
                                                                      "MEMORY": "0"}])
def test_no_limit_without_the_flag_or_a_usable_memory(tmp_path: Path, env: dict) -> None:
    out = run_limited(tmp_path, CODE, **env)
    assert out.stdout.split() == ["None", "300", "MB", "ok", "500", "MB", "ok"], out.stderr
