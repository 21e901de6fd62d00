"""parsl_poncho.multiprocessing.store on a real redis-server: the server the driver starts
(password, no persistence, maxmemory, cleanup at exit), a store that pickles to a process
without parsl_poncho, the clear errors (no redis-server, killed server, wrong password), and
an existing Redis given as redis_url.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import redis
from tools import require_tool

from parsl_poncho.multiprocessing import _redis_server
from parsl_poncho.multiprocessing.store import Store, StoreUnavailable

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def server():
    """A redis-server as the driver starts it, stopped after the test."""
    require_tool("redis-server")
    started = _redis_server.start_server("127.0.0.1", "64mb")
    yield started
    started.stop()


@pytest.fixture()
def store(server):
    return Store(server.url, "poncho:test:")


def run_driver(code: str, env: dict | None = None, timeout: float = 60) -> dict:
    """Run ``code`` as a fresh driver; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli(url: str, *args: str, password: bool = True) -> subprocess.CompletedProcess:
    """redis-cli against ``url`` (with its password unless ``password`` is false)."""
    require_tool("redis-cli")
    parsed = redis.connection.parse_url(url)
    command = ["redis-cli", "-h", parsed["host"], "-p", str(parsed["port"])]
    if password:
        command += ["--no-auth-warning", "-a", parsed["password"]]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=10)


def test_the_server_has_a_password_no_persistence_and_a_memory_limit(server):
    assert "refused" not in cli(server.url, "PING").stdout
    assert cli(server.url, "PING").stdout.strip() == "PONG"
    assert "NOAUTH" in cli(server.url, "GET", "x", password=False).stdout
    config = cli(server.url, "CONFIG", "GET", "*").stdout.split("\n")
    values = dict(zip(config[::2], config[1::2]))
    assert values["save"] == "" and values["appendonly"] == "no"
    assert int(values["maxmemory"]) == 64 * 1024 * 1024
    assert values["maxmemory-policy"] == "noeviction"
    # the password is not on the command line
    with open(f"/proc/{server.process.pid}/cmdline", "rb") as f:
        assert redis.connection.parse_url(server.url)["password"].encode() not in f.read()


def test_a_client_with_a_wrong_password_gets_a_clear_error(server):
    parsed = redis.connection.parse_url(server.url)
    wrong = Store(f"redis://:nope@{parsed['host']}:{parsed['port']}/0", "p:")
    with pytest.raises(StoreUnavailable, match="refused the password"):
        wrong.client().ping()


def test_keys_are_prefixed_and_never_expire(store):
    client = store.client()
    client.set(store.key("a", "b"), b"1")
    client.rpush(store.key("list"), b"x")
    assert sorted(store.scan_keys()) == ["poncho:test:a:b", "poncho:test:list"]
    assert client.ttl(store.key("a", "b")) == -1  # no expiry
    assert store.delete_keys() == 2 and store.scan_keys() == []


def test_a_store_pickles_to_a_python_without_parsl_poncho(store, tmp_path):
    store.client().set(store.key("k"), b"seen")
    data = cloudpickle.dumps(store)
    code = ("import pickle, sys\n"
            "assert 'parsl_poncho' not in sys.modules\n"
            "s = pickle.loads(sys.stdin.buffer.read())\n"
            "try:\n    import parsl_poncho\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('parsl_poncho is importable')\n"
            "print(s.client().get(s.key('k')).decode(), s.prefix)\n")
    # -I -S (no .pth files, so no editable install) and only redis's site-packages on the path
    site = str(Path(redis.__file__).parent.parent)
    runner = tmp_path / "run.py"
    runner.write_text(f"import sys\nsys.path.append({site!r})\n" + code)
    proc = subprocess.run([sys.executable, "-I", "-S", str(runner)], input=data,
                          capture_output=True, cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == ["seen", "poncho:test:"]


def test_a_store_unpickled_after_a_fork_gets_its_own_connection(store):
    client = store.client()
    assert store.client() is client
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = store.client() is not client and store.client().ping()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert store.client().ping()


def test_killing_the_server_gives_a_clear_error_within_seconds(server, store):
    errors: list[BaseException] = []

    def wait_for_item() -> None:  # a blocked BLPOP when the server dies
        try:
            store.client().blpop([store.key("never")], timeout=0)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_item, daemon=True)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    os.kill(server.process.pid, signal.SIGKILL)
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    with pytest.raises(StoreUnavailable, match="unavailable.*stopped or killed"):
        store.client().set(store.key("x"), b"1")
    assert time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable), errors


def test_without_redis_server_the_error_says_how_to_get_one(tmp_path):
    report = run_driver("""
        import json
        from parsl_poncho.multiprocessing.store import get_store, StoreUnavailable
        try:
            get_store()
        except StoreUnavailable as exc:
            print(json.dumps({"error": str(exc)}))
    """, env={"PATH": str(tmp_path), "PONCHO_REDIS_URL": ""})
    assert "redis-server is not installed" in report["error"]
    assert "conda-forge redis-server" in report["error"] and "redis_url" in report["error"]


def test_the_driver_leaves_no_key_and_no_server_at_exit():
    require_tool("redis-server")
    report = run_driver("""
        import json
        from parsl_poncho.multiprocessing.store import get_store
        store = get_store()
        store.client().set(store.key("left"), b"1")
        print(json.dumps({"url": store.url, "pid": int(store.client().info()["process_id"])}))
    """)
    assert not Path(f"/proc/{report['pid']}").exists()
    assert "refused" in cli(report["url"], "PING").stderr + cli(report["url"], "PING").stdout


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a reaper may be slow to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_driver_leaves_no_server_behind():
    """SIGKILL skips the exit handlers: the watchdog stops the server within seconds."""
    require_tool("redis-server")
    code = textwrap.dedent("""
        import json, os, signal
        from parsl_poncho.multiprocessing.store import get_store
        store = get_store()
        store.client().set(store.key("left"), b"1")
        print(json.dumps({"url": store.url, "pid": int(store.client().info()["process_id"])}),
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 10
    while _running(report["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(report["pid"]), "redis-server outlived its driver"
    assert "refused" in cli(report["url"], "PING").stderr + cli(report["url"], "PING").stdout


def test_an_existing_redis_keeps_running_and_loses_only_this_runs_keys(server):
    client = redis.Redis.from_url(server.url)
    client.set("someone-else", b"1")
    report = run_driver("""
        import json
        from parsl_poncho.multiprocessing.store import get_store
        store = get_store()
        store.client().set(store.key("mine"), b"1")
        print(json.dumps({"prefix": store.prefix, "keys": store.scan_keys()}))
    """, env={"PONCHO_REDIS_URL": server.url})
    assert report["keys"] == [report["prefix"] + "mine"]
    assert client.keys("*") == [b"someone-else"]
    assert server.process.poll() is None


def test_configure_store_after_first_use_is_refused(server):
    report = run_driver("""
        import json, os
        import parsl_poncho.multiprocessing.store as st
        st.configure_store(redis_url=os.environ["URL"])
        st.get_store()
        try:
            st.configure_store(maxmemory="1mb")
        except st.StoreUnavailable as exc:
            print(json.dumps({"error": str(exc)}))
    """, env={"URL": server.url})
    assert "in use already" in report["error"]


def test_a_pickled_store_round_trips(store):
    again = pickle.loads(cloudpickle.dumps(store))
    assert (again.url, again.prefix) == (store.url, store.prefix)
    assert "***" in repr(again) and redis.connection.parse_url(store.url)["password"] \
        not in repr(again)


def test_blocking_commands_wait_past_one_round_trip(store, monkeypatch):
    from parsl_poncho.multiprocessing import store as store_module

    monkeypatch.setattr(store_module, "BLOCK_SLICE", 0.2)
    client = store.client()
    threading.Timer(1.0, client.rpush, (store.key("late"), b"x")).start()
    started = time.monotonic()
    assert client.blpop([store.key("late")], timeout=0) == (store.key("late").encode(), b"x")
    assert 0.9 < time.monotonic() - started < 5
    started = time.monotonic()
    assert client.blpop([store.key("never")], timeout=0.7) is None  # its own timeout holds
    assert 0.6 < time.monotonic() - started < 3
