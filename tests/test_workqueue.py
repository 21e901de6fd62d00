"""Tests of the Work Queue binding, result translation and the manager process."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tools import require, require_tool

from parsl_poncho import workqueue
from parsl_poncho.errors import ExecutorError
from parsl_poncho.workqueue import (
    FileToWq,
    ManagerSettings,
    TaskToWq,
    WqToTask,
    count_transfers,
    explain_result,
    load_work_queue,
)


def _results(results, n: int, timeout: float = 60) -> list[WqToTask]:
    """The next ``n`` WqToTask messages (the manager sends a list per round)."""
    got: list[WqToTask] = []
    while len(got) < n:
        got += results.get(timeout=timeout)
    return got


def test_explain_result_names_code_and_shim_meaning():
    text = explain_result("OUTPUT_MISSING", 65, "poncho_run: checksum mismatch\n")
    assert "OUTPUT_MISSING" in text
    assert "corrupt" in text
    assert "checksum mismatch" in text


def test_explain_result_unknown_code_and_no_output():
    assert explain_result("NEW_THING", 0) == (
        "Work Queue result NEW_THING: unrecognised Work Queue result"
    )
    assert "retried" in explain_result("MAX_RETRIES", 0)


def test_explain_result_keeps_only_last_lines():
    output = "\n".join(f"line {i}" for i in range(100))
    text = explain_result("SIGNAL", 0, output)
    assert "line 99" in text and "line 10\n" not in text


def test_load_work_queue_falls_back_to_legacy_dir(monkeypatch):
    before = [p for p in sys.path if p != workqueue.LEGACY_DIST_PACKAGES]
    monkeypatch.setattr(sys, "path", list(before))
    for name in ("work_queue", "ndcctools", "ndcctools.work_queue"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    require(Path(workqueue.LEGACY_DIST_PACKAGES, "work_queue.py").exists(),
            "Debian's python3-workqueue is not installed (apt-get install python3-workqueue)")
    wq = load_work_queue()
    assert hasattr(wq, "WorkQueue")
    # appended after every entry it found, never ahead of them (importing Debian's module may
    # append more: it imports distutils, and setuptools 84 then adds its _vendor dir)
    assert sys.path[:len(before) + 1] == [*before, workqueue.LEGACY_DIST_PACKAGES]


def test_load_work_queue_missing_is_clear(monkeypatch):
    monkeypatch.setattr(workqueue, "LEGACY_DIST_PACKAGES", "/nonexistent/dist-packages")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "dist-packages" not in p])
    for name in ("work_queue", "ndcctools", "ndcctools.work_queue", "_work_queue"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ExecutorError, match="python3-workqueue"):
        load_work_queue()


def test_result_names_maps_codes():
    wq = load_work_queue()
    names = workqueue.result_names(wq)
    assert names[wq.WORK_QUEUE_RESULT_SUCCESS] == "SUCCESS"
    assert names[wq.WORK_QUEUE_RESULT_OUTPUT_MISSING] == "OUTPUT_MISSING"


def test_count_transfers_parses_put_lines(tmp_path):
    log = tmp_path / "debug_log"
    log.write_text(
        "x wq: tx to vm (127.0.0.1:1): put file-0-ab-env-1.tar.gz 20 0644\n"
        "x wq: tx to vm (127.0.0.1:1): infile file-0-ab-env-1.tar.gz env-1.tar.gz 1\n"
        "x wq: tx to vm (127.0.0.1:2): put file-0-ab-env-1.tar.gz 20 0644\n"
    )
    assert count_transfers(str(log)) == {
        ("vm (127.0.0.1:1)", "file-0-ab-env-1.tar.gz"): 1,
        ("vm (127.0.0.1:2)", "file-0-ab-env-1.tar.gz"): 1,
    }


@pytest.mark.slow
def test_manager_process_runs_tasks_and_caches_inputs(tmp_path):
    """Real manager process + one worker: results come back, a cached input is sent once."""
    require_tool("work_queue_worker")
    from parsl.multiprocessing import SpawnContext, SpawnProcess

    big = tmp_path / "env-x.tar.gz"
    big.write_bytes(b"0" * 100_000)
    tasks, results, mailbox = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    stop = SpawnContext.Event()
    settings = ManagerSettings(port=0, log_dir=str(tmp_path), max_idle=0.05)
    proc = SpawnProcess(target=workqueue.run_manager, kwargs=dict(
        settings=settings, task_queue=tasks, result_queue=results, port_mailbox=mailbox,
        should_stop=stop))
    proc.start()
    port = mailbox.get(timeout=60)
    assert port
    worker = subprocess.Popen(["work_queue_worker", "--cores", "2", "-t", "60", "localhost",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(4):
            out = tmp_path / f"out{i}"
            tasks.put(TaskToWq(
                id=str(i), command=f"wc -c < env-x.tar.gz > out; exit {i % 2 * 3}",
                category="c", inputs=(FileToWq(str(big), "env-x.tar.gz", cache=True),),
                outputs=(FileToWq(str(out), "out"),), result_file=str(out),
                resources={"cores": 1}))
        got = {msg.id: msg for msg in _results(results, 4)}
    finally:
        stop.set()
        proc.join(timeout=30)
        worker.wait(timeout=30)
    assert proc.exitcode == 0
    assert worker.returncode is not None
    assert [got[str(i)].return_status for i in range(4)] == [0, 3, 0, 3]
    assert all(m.result == "SUCCESS" and m.result_file for m in got.values())
    assert (tmp_path / "out0").read_text().strip() == "100000"
    sent = count_transfers(str(tmp_path / "debug_log"))
    env_sends = [n for (_w, name), n in sent.items() if name.endswith("env-x.tar.gz")]
    assert env_sends == [1]


@pytest.mark.slow
def test_manager_reports_missing_output(tmp_path):
    from parsl.multiprocessing import SpawnContext, SpawnProcess

    tasks, results, mailbox = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    stop = SpawnContext.Event()
    proc = SpawnProcess(target=workqueue.run_manager, kwargs=dict(
        settings=ManagerSettings(max_idle=0.05), task_queue=tasks, result_queue=results,
        port_mailbox=mailbox, should_stop=stop))
    proc.start()
    port = mailbox.get(timeout=60)
    worker = subprocess.Popen(["work_queue_worker", "-t", "60", "localhost", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        res = tmp_path / "result.pkl"
        tasks.put(TaskToWq(id="7", command="echo broken; exit 20", category="c", inputs=(),
                           outputs=(FileToWq(str(res), "result.pkl"),), result_file=str(res)))
        [msg] = _results(results, 1)
    finally:
        stop.set()
        proc.join(timeout=30)
        worker.wait(timeout=30)
    assert msg.result_file is None
    assert msg.return_status == 20
    text = explain_result(msg.result, msg.return_status, msg.output)
    assert "run_function.py" in text and "broken" in text
    with pytest.raises(queue.Empty):
        results.get(timeout=0.1)


class _FakeQueue:
    """Records category requests; refuses a category named "bad", as Work Queue refuses an
    unknown resource name."""

    def __init__(self) -> None:
        self.categories: dict[str, dict] = {}

    def specify_category_max_resources(self, category: str, rmd: dict) -> None:
        if category == "bad":
            raise AttributeError("'rmsummary' object has no attribute 'memroy'")
        self.categories[category] = rmd


def test_apply_category_sets_max_resources_and_survives_a_refusal(caplog):
    from parsl_poncho.workqueue import CategoryToWq, apply_category

    q = _FakeQueue()
    assert apply_category(q, CategoryToWq("fit", {"memory": 400}))
    assert q.categories == {"fit": {"memory": 400}}
    assert not apply_category(q, CategoryToWq("bad", {"memroy": 1}))
    assert "Work Queue refused requests {'memroy': 1} for category 'bad'" in caplog.text


def test_allocation_of_reads_the_box_and_tolerates_bindings_without_it():
    from types import SimpleNamespace

    from parsl_poncho.workqueue import allocation_of

    box = SimpleNamespace(cores=1.0, memory=400.0, disk=-1.0)
    assert allocation_of(SimpleNamespace(resources_allocated=box)) == {"cores": 1.0,
                                                                     "memory": 400.0}
    assert allocation_of(SimpleNamespace(resources_allocated=None)) == {}
    assert allocation_of(SimpleNamespace()) == {}


@pytest.mark.slow
def test_manager_applies_a_category_request_to_tasks_without_their_own(tmp_path):
    """CategoryToWq through a real manager: Work Queue allocates it (MEMORY in the task, and
    the allocation read back) to tasks that ask no memory; a task's own request wins."""
    require_tool("work_queue_worker")
    from parsl.multiprocessing import SpawnContext, SpawnProcess

    from parsl_poncho.workqueue import CategoryToWq

    tasks, results, mailbox = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    stop = SpawnContext.Event()
    proc = SpawnProcess(target=workqueue.run_manager, kwargs=dict(
        settings=ManagerSettings(max_idle=0.05), task_queue=tasks, result_queue=results,
        port_mailbox=mailbox, should_stop=stop))
    proc.start()
    port = mailbox.get(timeout=60)
    worker = subprocess.Popen(["work_queue_worker", "--cores", "2", "--memory", "4000", "-t",
                               "60", "localhost", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tasks.put(CategoryToWq("fit", {"memory": 400}))
        for i, resources in enumerate([{"cores": 1}, {"cores": 1, "memory": 900}]):
            out = tmp_path / f"out{i}"
            tasks.put(TaskToWq(id=str(i), command="echo $MEMORY > out", category="fit",
                               inputs=(), outputs=(FileToWq(str(out), "out"),),
                               result_file=str(out), resources=resources))
        got = {m.id: m for m in _results(results, 2)}
    finally:
        stop.set()
        proc.join(timeout=30)
        worker.wait(timeout=30)
    assert (tmp_path / "out0").read_text().strip() == "400"
    assert got["0"].allocated["memory"] == 400 and got["0"].allocated["cores"] == 1
    assert (tmp_path / "out1").read_text().strip() == "900"
    assert got["1"].allocated["memory"] == 900
    assert {m.worker_memory for m in got.values()} <= {0, 4000}
    assert got["1"].worker_memory == 4000 or got["0"].worker_memory == 4000


def test_stall_message_names_what_no_worker_offers():
    from parsl_poncho.stall import stall_message

    largest = {"cores": 2, "memory": 1000, "disk": 50000}
    disk_over_memory = stall_message(3, 1, 61.2, largest, [{"cores": 1, "disk": 1100},
                                                           {"cores": 1, "disk": 1041}])
    assert disk_over_memory.startswith("3 task(s) have waited 61 s while 1 connected")
    assert "offers cores 2, memory 1000, disk 50000 (MB)" in disk_over_memory
    assert "smallest request is cores 1, memory unset, disk 1041" in disk_over_memory
    assert "--memory of at least 1041 MB, or lower default_disk" in disk_over_memory
    assert "No worker has enough" not in disk_over_memory
    too_many_cores = stall_message(1, 2, 60, largest, [{"cores": 4}])
    assert "No worker has enough cores" in too_many_cores
    assert "--memory" not in too_many_cores


class _FakeStats:
    def __init__(self) -> None:
        self.tasks_waiting, self.tasks_on_workers, self.workers_connected = 1, 0, 1
        self.max_cores, self.max_memory, self.max_disk = 1, 1000, 50000


def test_stall_watch_warns_once_per_stall(monkeypatch, caplog):
    from types import SimpleNamespace

    from parsl_poncho.stall import StallWatch as _StallWatch

    clock = [100.0]
    monkeypatch.setattr(workqueue.time, "monotonic", lambda: clock[0])
    q = SimpleNamespace(stats=_FakeStats())
    watch = _StallWatch(q, after=60)
    pending = {"1": TaskToWq(id="1", command="true", category="c", inputs=(), outputs=(),
                             result_file="r", resources={"cores": 1, "disk": 1041})}

    def tick(seconds: float) -> int:
        clock[0] += seconds
        watch(pending)
        return caplog.text.count("have waited")

    assert tick(0) == 0  # the stall starts being timed
    assert tick(30) == 0
    assert tick(31) == 1  # 61 s: said once
    assert tick(30) == 1 and tick(30) == 1
    q.stats.tasks_on_workers = 1  # a task runs: the stall is over
    assert tick(10) == 1
    q.stats.tasks_on_workers = 0
    assert tick(10) == 1 and tick(61) == 2  # a new stall is said again


@pytest.mark.slow
def test_manager_says_why_tasks_wait_on_a_worker_that_fits_none(tmp_path, capfd):
    """A real worker with --memory 1000 and a task asking disk 1041 MB (what default_disk
    gives): Work Queue never dispatches it, and the manager process says why on stderr."""
    require_tool("work_queue_worker")
    from parsl.multiprocessing import SpawnContext, SpawnProcess

    tasks, results, mailbox = SpawnContext.Queue(), SpawnContext.Queue(), SpawnContext.Queue()
    stop = SpawnContext.Event()
    proc = SpawnProcess(target=workqueue.run_manager, kwargs=dict(
        settings=ManagerSettings(max_idle=0.05, stall_warning=2), task_queue=tasks,
        result_queue=results, port_mailbox=mailbox, should_stop=stop))
    proc.start()
    port = mailbox.get(timeout=60)
    worker = subprocess.Popen(["work_queue_worker", "--cores", "1", "--memory", "1000",
                               "-t", "60", "localhost", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    said = ""
    try:
        res = tmp_path / "out"
        tasks.put(TaskToWq(id="1", command="echo ran > out", category="c", inputs=(),
                           outputs=(FileToWq(str(res), "out"),), result_file=str(res),
                           resources={"cores": 1, "disk": 1041}))
        deadline = time.monotonic() + 60
        while "have waited" not in said and time.monotonic() < deadline:
            time.sleep(0.5)
            said += capfd.readouterr().err
        with pytest.raises(queue.Empty):
            results.get(timeout=0.1)  # still not run
    finally:
        stop.set()
        proc.join(timeout=30)
        worker.wait(timeout=30)
    assert "1 task(s) have waited" in said, said
    assert "memory 1000" in said and "disk 1041" in said
    assert "--memory of at least 1041 MB" in said
