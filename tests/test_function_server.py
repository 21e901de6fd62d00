"""Serverless mode on a worker: poncho_serve (client) and function_server.py, run for real through
worker_shim/poncho_run with an environment directory whose python is this interpreter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import pytest
from shim_helpers import SHELL
from tools import require

from parsl_poncho.shim import (
    SERVER_FILES,
    poncho_run_path,
    poncho_serve_path,
    shim_file,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- fixtures and helpers ---------------------------------------------------------------------


def make_env(path: Path) -> Path:
    """An environment directory whose bin/python is this interpreter (with cloudpickle)."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    if sys.prefix != sys.base_prefix:  # a venv: make the env dir look like one
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", path / "pyvenv.cfg")
        (path / "lib").symlink_to(Path(sys.prefix) / "lib")
    (path / ".poncho-ready").write_text("poncho_run 1\n")
    return path


class Node:
    """One fake node: an env dir, a task sandbox, and the server beside the env."""

    def __init__(self, root: Path, name: str = "env-a") -> None:
        self.env = make_env(root / name)
        self.server_dir = Path(f"{self.env}.server-v1")
        self.sandbox = root / f"sandbox-{name}"
        self.sandbox.mkdir()
        for src in (*map(shim_file, SERVER_FILES), poncho_serve_path()):
            shutil.copy(src, self.sandbox / src.name)

    def write_call(self, fn, *args, **kwargs) -> None:
        (self.sandbox / "fn.pkl").write_bytes(cloudpickle.dumps((fn, args, kwargs)))
        (self.sandbox / "result.pkl").unlink(missing_ok=True)

    def argv(self, *serve_opts: str) -> list[str]:
        return [SHELL, str(poncho_run_path()), "-e", str(self.env), "--", "sh", "poncho_serve",
                "--idle", "30", *serve_opts, "--", "fn.pkl", "result.pkl"]

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra)
        return env

    def run(self, *serve_opts: str, timeout: float = 60, **extra: str):
        return subprocess.run(self.argv(*serve_opts), cwd=self.sandbox, env=self.environ(**extra),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *serve_opts: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*serve_opts), cwd=self.sandbox,
                                env=self.environ(**extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def call(self, fn, *args, **kwargs):
        self.write_call(fn, *args, **kwargs)
        return self.run()

    def result(self) -> dict:
        return cloudpickle.loads((self.sandbox / "result.pkl").read_bytes())

    def server_pid(self) -> int | None:
        try:
            return int((self.server_dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            return (self.server_dir / "log").read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        pid = self.server_pid()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def rss_kb(pid: int) -> int:
    """Resident anonymous memory (KiB): what a leak grows; file pages come and go with reclaim."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError(f"no RssAnon for {pid}")


@pytest.fixture()
def node(tmp_path: Path):
    n = Node(tmp_path)
    yield n
    n.stop()


# -- functions run by the calls (pickled by value) --------------------------------------------


def double(x):
    return 2 * x


def fail():
    raise KeyError("no such key")


def hard_exit(code):
    os._exit(code)


def segfault():
    import ctypes

    return ctypes.string_at(0)


def mark_module():
    import json

    before = getattr(json, "_poncho_mark", None)
    json._poncho_mark = "set by a call"
    os.environ["PONCHO_MARK"] = "set by a call"
    return before, os.environ.get("PONCHO_MARK_SEEN")


def read_marks():
    import json

    return getattr(json, "_poncho_mark", None), os.environ.get("PONCHO_MARK")


def where_am_i():
    with open("written.txt", "w") as f:
        f.write("here")
    print("to stdout from the call", flush=True)
    print("to stderr from the call", file=sys.stderr, flush=True)
    return os.getcwd(), os.environ.get("PONCHO_TEST_VAR"), sys.path[0]


def sleep_then(seconds, value, marker):
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return value


def noop():
    return None


def random_draws():
    import random

    import numpy

    return random.random(), float(numpy.random.random())


def blas_threads():
    import numpy
    import threadpoolctl

    numpy.ones((64, 64)) @ numpy.ones((64, 64))  # the pool at work
    return sorted(i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas")


# -- results and exit codes -------------------------------------------------------------------


def test_value_returns(node: Node) -> None:
    proc = node.call(double, 21)
    assert proc.returncode == 0, proc.stderr
    assert (node.result()["status"], node.result()["value"]) == ("ok", 42)
    assert "regular mode" not in proc.stderr
    assert node.server_pid() is not None and pid_alive(node.server_pid())


def test_exception_exits_10(node: Node) -> None:
    proc = node.call(fail)
    assert proc.returncode == 10, proc.stderr
    result = node.result()
    assert result["status"] == "raised" and result["exc_type"] == "builtins.KeyError"


def test_bad_pickle_exits_20_with_message(node: Node) -> None:
    node.call(double, 1)
    (node.sandbox / "fn.pkl").write_bytes(b"not a pickle")
    (node.sandbox / "result.pkl").unlink()
    proc = node.run()
    assert proc.returncode == 20
    assert "cannot load the function from 'fn.pkl'" in proc.stderr
    assert not (node.sandbox / "result.pkl").exists()
    assert "regular mode" not in proc.stderr


def test_os_exit_code_passes_through(node: Node) -> None:
    proc = node.call(hard_exit, 3)
    assert proc.returncode == 3, proc.stderr


def test_segfault_names_the_signal_and_server_survives(node: Node) -> None:
    node.call(double, 1)
    pid = node.server_pid()
    proc = node.call(segfault)
    assert proc.returncode == 139
    assert "killed by signal 11 (SIGSEGV)" in proc.stderr
    proc = node.call(double, 5)
    assert proc.returncode == 0 and node.result()["value"] == 10
    assert node.server_pid() == pid and pid_alive(pid)


# -- isolation and the task's context ---------------------------------------------------------


def test_nothing_survives_between_calls(node: Node) -> None:
    assert node.call(mark_module).returncode == 0
    assert node.result()["value"] == (None, None)
    proc = node.call(read_marks)
    assert proc.returncode == 0, proc.stderr
    assert node.result()["value"] == (None, None)


def test_each_call_gets_its_own_random_streams(node: Node) -> None:
    # the calls' processes are forks of one heap: each must still draw its own numbers, from
    # numpy's global RNG (reseeded by the forker before each fork) and from random's
    node.write_call(random_draws)
    draws, servers = [], set()
    for _ in range(6):
        proc = node.run("--preload", "numpy.random")
        assert proc.returncode == 0 and "regular mode" not in proc.stderr, proc.stderr
        draws.append(node.result()["value"])
        servers.add(node.server_pid())
    assert len(servers) == 1 and "preload numpy.random: ok" in node.log(), servers
    assert len({python for python, _ in draws}) == 6, draws
    assert len({numpy for _, numpy in draws}) == 6, draws


def test_call_runs_in_the_sandbox_with_the_clients_environment(node: Node) -> None:
    node.write_call(where_am_i)
    proc = node.run(PONCHO_TEST_VAR="from the client")
    assert proc.returncode == 0, proc.stderr
    cwd, var, path0 = node.result()["value"]
    assert cwd == str(node.sandbox) == path0
    assert var == "from the client"
    assert (node.sandbox / "written.txt").read_text() == "here"
    assert "to stdout from the call" in proc.stdout
    assert "to stderr from the call" in proc.stderr


def test_environment_of_the_task_that_started_the_server_does_not_reach_later_calls(
        node: Node) -> None:
    node.write_call(where_am_i)
    assert node.run(PONCHO_TEST_VAR="the first task's").returncode == 0  # starts the server
    assert node.result()["value"][1] == "the first task's"
    proc = node.run()
    assert proc.returncode == 0, proc.stderr
    assert node.result()["value"][1] is None


def test_output_to_a_file_is_appended(node: Node) -> None:
    node.write_call(where_am_i)
    out = node.sandbox / "task.out"
    with open(out, "w") as f:
        f.write("before\n")
        f.flush()
        proc = subprocess.run(node.argv(), cwd=node.sandbox, stdout=f, stderr=subprocess.STDOUT)
    assert proc.returncode == 0
    text = out.read_text()
    assert text.startswith("before\n") and "to stdout from the call" in text


# -- starting, concurrency, preloads ----------------------------------------------------------


def test_concurrent_first_calls_start_exactly_one_server(node: Node) -> None:
    node.write_call(double, 4)
    with ThreadPoolExecutor(8) as pool:
        procs = list(pool.map(lambda _: node.run(), range(8)))
    assert [p.returncode for p in procs] == [0] * 8, [p.stderr for p in procs]
    assert node.log().count("] start:") == 1
    assert not any("regular mode" in p.stderr for p in procs)


def test_preload_failure_is_logged_and_skipped(node: Node) -> None:
    node.write_call(double, 2)
    proc = node.run("--preload", "json,no_such_module_xyz")
    assert proc.returncode == 0, proc.stderr
    log = node.log()
    assert "preload json: ok" in log
    assert "preload no_such_module_xyz: failed (ModuleNotFoundError" in log
    assert "huge pages: " in log  # the preloaded heap's layout for cheap forks (or why not)


def test_thread_pools_follow_each_calls_variables_not_the_servers(node: Node) -> None:
    one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    two = {name: "2" for name in one}
    node.write_call(blas_threads)
    assert node.run("--preload", "numpy", **one).returncode == 0  # starts the server
    assert node.result()["value"] == [1]
    assert "thread pools: resized per call" in node.log()
    for size, variables in ((2, two), (1, one), (2, two)):
        proc = node.run("--preload", "numpy", **variables)
        assert proc.returncode == 0 and "regular mode" not in proc.stderr, proc.stderr
        assert node.result()["value"] == [size], (size, node.result())


def test_two_envs_two_servers(tmp_path: Path) -> None:
    a, b = Node(tmp_path, "env-a"), Node(tmp_path, "env-b")
    try:
        assert a.call(double, 1).returncode == 0
        assert b.call(double, 2).returncode == 0
        assert b.result()["value"] == 4
        pa, pb = a.server_pid(), b.server_pid()
        assert pa and pb and pa != pb and pid_alive(pa) and pid_alive(pb)
    finally:
        a.stop()
        b.stop()


def test_missing_server_files_fall_back_to_regular_mode(node: Node) -> None:
    (node.sandbox / "function_server.py").unlink()
    proc = node.call(double, 8)
    assert proc.returncode == 0
    assert "poncho_serve: running in regular mode: no function_server.py" in proc.stderr
    assert node.result()["value"] == 16


def test_usage_error_exits_20(node: Node) -> None:
    proc = subprocess.run([SHELL, "poncho_serve", "fn.pkl"], cwd=node.sandbox,
                          capture_output=True, text=True)
    assert proc.returncode == 20
    assert "expected FN.pkl RESULT.pkl" in proc.stderr


def test_foreign_request_is_refused_and_logged(node: Node) -> None:
    assert node.call(double, 1).returncode == 0
    with open(node.server_dir / "requests", "w") as fifo:
        fifo.write(f"{os.getpid()}\n")  # no subshell of ours reads the alive FIFO
        fifo.write("1\n")  # not a client (and as root: uid 0 passes, no subshell)
        fifo.write("garbage\n")
    assert wait_for(lambda: node.log().count("refused the request") == 3, 20), node.log()
    assert node.call(double, 3).returncode == 0


# -- faults -----------------------------------------------------------------------------------


def kill_mid_call(node: Node, victim) -> str:
    """SIGKILL ``victim(node)``'s pid while a call runs; the call must still give its result
    (rerun in regular mode). Returns the client's output."""
    marker = node.sandbox / "started"
    node.write_call(sleep_then, 1.5, "done", str(marker))
    client = node.popen()
    assert wait_for(marker.exists, 20)
    os.kill(victim(node), signal.SIGKILL)
    out, _ = client.communicate(timeout=30)
    assert client.returncode == 0, out
    assert "poncho_serve: running in regular mode:" in out
    assert (node.result()["status"], node.result()["value"]) == ("ok", "done")
    return out


def test_server_killed_mid_call_falls_back_and_produces_the_result(node: Node) -> None:
    kill_mid_call(node, Node.server_pid)


def forker_pid(node: Node) -> int:
    """The server's one child, which forks the calls' processes."""
    server = node.server_pid()
    kids = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


def test_environment_too_big_to_hand_over_runs_the_call_in_regular_mode(node: Node) -> None:
    assert node.call(double, 1).returncode == 0  # a server is up
    node.write_call(where_am_i)
    proc = node.run(PONCHO_TEST_VAR="x" * 100_000, PONCHO_PADDING="y" * 120_000)
    assert proc.returncode == 0, proc.stderr
    assert "running in regular mode: the function server refused the call: cannot hand" in (
        proc.stderr)
    assert node.result()["value"][1] == "x" * 100_000
    assert node.call(double, 2).returncode == 0 and node.result()["value"] == 4  # still serving


def test_forker_killed_mid_call_falls_back_and_the_server_exits(node: Node) -> None:
    assert node.call(double, 1).returncode == 0  # a server is up
    server = node.server_pid()
    kill_mid_call(node, forker_pid)  # the call dies with the forker and reruns
    assert wait_for(lambda: not pid_alive(server), 20)
    assert "the forker process died; 1 call(s) go to regular mode" in node.log()
    proc = node.call(double, 5)  # a new server
    assert proc.returncode == 0 and "regular mode" not in proc.stderr, proc.stderr
    assert node.result()["value"] == 10 and node.server_pid() != server


def test_killed_client_kills_its_call(node: Node) -> None:
    marker = node.sandbox / "started"
    node.write_call(sleep_then, 60, "never", str(marker))
    client = node.popen()
    assert wait_for(lambda: marker.exists() and marker.read_text(), 20)
    child = int(marker.read_text())
    assert pid_alive(child)
    os.kill(client.pid, signal.SIGKILL)
    client.wait(timeout=5)
    assert wait_for(lambda: not pid_alive(child), 20)
    assert "client" in node.log() and "killing its call" in node.log()


def test_server_stopping_finishes_running_calls_and_new_calls_restart_it(node: Node) -> None:
    marker = node.sandbox / "started"
    node.write_call(sleep_then, 8, "finished", str(marker))
    client = node.popen()
    assert wait_for(marker.exists, 20)
    old, forker, call = node.server_pid(), forker_pid(node), int(marker.read_text())
    os.kill(old, signal.SIGTERM)
    # the forker lets its spares go and forks no new ones while calls drain
    children = Path(f"/proc/{forker}/task/{forker}/children")
    assert wait_for(lambda: children.read_text().split() == [str(call)], 6), children.read_text()
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 0 and "regular mode" not in out, out
    assert wait_for(lambda: not pid_alive(old), 20)
    proc = node.call(double, 6)
    assert proc.returncode == 0 and "regular mode" not in proc.stderr
    assert node.server_pid() not in (None, old)


def test_idle_timeout_exits(node: Node) -> None:
    node.write_call(noop)
    assert node.run("--idle", "1").returncode == 0
    pid = node.server_pid()
    assert pid is not None
    assert wait_for(lambda: not pid_alive(pid), 20)
    assert "exiting: idle for 1s" in node.log()
    assert not (node.server_dir / "ready").exists()


def test_evicted_env_makes_the_server_exit(node: Node) -> None:
    assert node.call(noop).returncode == 0
    pid = node.server_pid()
    (node.env / ".poncho-ready").unlink()
    assert wait_for(lambda: not pid_alive(pid), 20)
    assert not node.server_dir.exists()  # removed with the env it served


@pytest.mark.slow
def test_server_rss_stable_over_1000_calls(node: Node) -> None:
    node.write_call(double, 1)
    for _ in range(50):
        assert node.run().returncode == 0
    pid, forker = node.server_pid(), forker_pid(node)
    seen = [(rss_kb(pid), rss_kb(forker))]
    for _ in range(2):  # two windows of 500 calls: a leak grows in both, a one-off step
        for _ in range(500):  # (khugepaged collapsing 2 MiB of heap) in one at most
            proc = node.run()
            assert proc.returncode == 0, proc.stderr
        seen.append((rss_kb(pid), rss_kb(forker)))
    assert node.server_pid() == pid and forker_pid(node) == forker
    for who in (0, 1):  # the server, the forker
        growth = [later[who] - earlier[who] for earlier, later in zip(seen, seen[1:])]
        assert min(growth) < 1536 and max(growth) < 8 * 1024, seen  # 3 KiB a call would show
    assert len(os.listdir(f"/proc/{pid}/fd")) < 20
    assert len(os.listdir(f"/proc/{forker}/fd")) < 20
    assert len(Path(f"/proc/{forker}/task/{forker}/children").read_text().split()) <= 3


def test_server_exits_when_its_work_queue_worker_is_gone(node: Node, tmp_path: Path) -> None:
    fake_worker = tmp_path / "work_queue_worker"  # comm of a process is its executable's name
    fake_worker.symlink_to(SHELL)
    node.write_call(noop)
    script = " ".join(f"'{a}'" for a in node.argv()) + "; echo rc=$?; exec sleep 60"
    worker = subprocess.Popen([str(fake_worker), "-c", script], cwd=node.sandbox,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "rc=0"
        pid = node.server_pid()
        assert pid is not None and pid_alive(pid)
        time.sleep(1)
        assert pid_alive(pid)  # its worker still runs
        worker.kill()
        worker.wait(timeout=5)
        assert wait_for(lambda: not pid_alive(pid), 20)
        assert "every Work Queue worker it served is gone" in node.log()
    finally:
        worker.kill()


def test_request_for_another_users_process_is_refused(node: Node) -> None:
    require(os.getuid() == 0, "needs root to start a process as another user")
    assert node.call(double, 1).returncode == 0
    other = subprocess.Popen(["sleep", "30"], user=65534)
    try:
        with open(node.server_dir / "requests", "w") as fifo:
            fifo.write(f"{other.pid}\n")
        assert wait_for(lambda: f"process {other.pid} belongs to another user" in node.log(), 20)
    finally:
        other.kill()
        other.wait()
    assert node.call(double, 3).returncode == 0


def test_unusable_server_dir_falls_back_to_regular_mode(node: Node) -> None:
    node.server_dir.write_text("not a directory")
    proc = node.call(double, 7)
    assert proc.returncode == 0
    assert "poncho_serve: running in regular mode: cannot create" in proc.stderr
    assert node.result()["value"] == 14


def test_stale_start_lock_of_a_dead_client_is_broken(node: Node) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (node.server_dir / "start.lock").mkdir(parents=True)
    (node.server_dir / "start.lock" / "owner").write_text(f"{dead.pid}\n")
    proc = node.call(double, 9)
    assert proc.returncode == 0 and "regular mode" not in proc.stderr, proc.stderr
    assert not (node.server_dir / "start.lock").exists()


def leave_a_process_behind(seconds):
    import os
    import subprocess
    import time

    # Helpers that outlive the call and keep every inherited fd but the task's output (which
    # a caller reading the task's output would rightly wait for, in any mode).
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(seconds)
        os._exit(0)
    subprocess.Popen(["sleep", str(seconds)], close_fds=False, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return "done"


@pytest.mark.parametrize("calls", [1, 3], ids=["first-call", "later-calls"])
def test_processes_a_call_leaves_behind_do_not_hold_up_its_task(node: Node, calls: int) -> None:
    node.write_call(leave_a_process_behind, 60)
    for _ in range(calls):  # each call runs in its own spare, forked ahead of time
        started = time.monotonic()
        proc = node.run(timeout=50)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert time.monotonic() - started < 30  # held up, it would take the leftovers' 60 s
        assert node.result()["value"] == "done"
    assert "regular mode" not in proc.stderr
