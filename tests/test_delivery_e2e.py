"""End to end, issue 21's delivery: 8 real workers on this host (``--cores 1``), each with its own
workspace, that cannot see the host's Python (tests/e2e/three_apps/hidden_worker.sh), and an
environment of 50-100 MB (numpy + pandas, tests/e2e/scale/apps.py).

Counted from the manager's debug log: the environment bytes the manager sent.
  manager mode: 8 x size; SharedDir and Url(serve=True): 0; Url with 4 workers per node cache:
  one GET per node cache; 2 foremen x 4 workers in manager mode: 2 x size.
Faults: a truncated file on the shared directory or behind the URL is refused by its sha256
with a clear error, and a new task succeeds once the file is good; the executor's HTTP server
stopped during a fetch loses no task.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from tools import can_hide_host_python, require, require_tool

from parsl_poncho import EnvOptions, PonchoExecutor, SharedDir, SizingOptions, Url

HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"
sys.path.insert(0, str(Path(__file__).parent / "e2e" / "scale"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python"),
]

#: (name in the debug log, size) of each put of an env tarball or code layer.
_PUT = re.compile(r"tx to .+?: put \S*?((?:env|code)-[0-9a-f]{64}\.tar\.gz) (\d+)")


def env_bytes_sent(run_dir: Path) -> dict[str, int]:
    """Bytes of each env tarball and code layer the manager sent, from its debug log."""
    (log,) = run_dir.glob("*/PonchoExecutor/wq/debug_log")
    sent: dict[str, int] = {}
    for m in _PUT.finditer(log.read_text(errors="replace")):
        sent[m.group(1)] = sent.get(m.group(1), 0) + int(m.group(2))
    return sent


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One env cache for the module: the 50-100 MB env builds once."""
    require_tool("work_queue_worker")
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    return tmp_path_factory.mktemp("scale-env-cache")


class Cluster:
    """Workers (and foremen) started by hand, each with its own workspace and node cache."""

    def __init__(self, root: Path, password: Path) -> None:
        self.root, self.procs, self.logs = root, [], []
        self.password = str(password)

    def _start(self, args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
        self.procs.append(proc)
        return proc

    def worker(self, port: int, name: str, cache: str) -> subprocess.Popen:
        return self._start(["sh", str(HIDDEN_WORKER), "--password", self.password,
                            "--cores", "1", "--memory", "1000",
                            "--disk", "4000", "-s", str(self.root / name), "127.0.0.1",
                            str(port)], name, {"PARSL_PONCHO_WORKER_CACHE": cache})

    def foreman(self, port: int, name: str) -> int:
        port_file = self.root / f"{name}.port"
        self._start(["work_queue_worker", "--password", self.password, "--foreman", "-Z",
                     str(port_file), "-s",
                     str(self.root / name), "127.0.0.1", str(port)], name, {})
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "the foreman wrote no port file"
            time.sleep(0.1)
        return int(port_file.read_text())

    def wait_connected(self, run_dir: Path, n: int, timeout: float = 60) -> None:
        """Until the manager's debug log shows ``n`` workers (or foremen) connected."""
        deadline = time.monotonic() + timeout
        while True:
            logs = list(run_dir.glob("*/PonchoExecutor/wq/debug_log"))
            text = logs[0].read_text(errors="replace") if logs else ""
            seen = len(re.findall(r"wq: worker \S+ connected", text))
            if seen >= n:
                return
            assert time.monotonic() < deadline, f"only {seen} of {n} workers connected"
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self.logs:
            log.close()


@contextlib.contextmanager
def running(env_cache: Path, tmp_path: Path, delivery: Any,
            **options: Any) -> Iterator[tuple[Any, Cluster]]:
    """A DFK with a PonchoExecutor (no provider blocks) and a Cluster to start workers in."""
    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    # A password keeps out workers of other runs on this host that look for a manager's port.
    password = tmp_path / "password"
    password.write_text("scale-test-secret\n")
    ex = PonchoExecutor(
        env_delivery=delivery,
        project_password_file=str(password),
        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
        **options,
        envs=EnvOptions(cache_dir=env_cache, extra_pkgs=["pandas"]),
        sizing=SizingOptions(default_disk=200),
    )
    cluster = Cluster(tmp_path / "nodes", password)
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), strategy="none")
    try:
        with parsl.load(config):
            yield ex, cluster
    finally:
        cluster.stop()


def _probe_app() -> Any:
    import apps
    import parsl

    return parsl.python_app(apps.probe, executors=["PonchoExecutor"])


def _check_results(results: list, caches: set[str]) -> None:
    assert [r[0] for r in results] == [sum(range(i + 1)) for i in range(len(results))]
    for _value, pandas_name, prefix, cache, saw_pyenv in results:
        assert pandas_name == "pandas" and saw_pyenv is False
        assert cache in caches and prefix.startswith(cache), (prefix, cache)


def _env_size(env_cache: Path) -> int:
    sizes = [p.stat().st_size for p in env_cache.glob("envs/*/env-*.tar.gz")
             if p.stat().st_size > 40_000_000]
    assert len(sizes) == 1, sizes
    return sizes[0]


@pytest.mark.parametrize("mode", ["manager", "shared", "url", "foremen"])
def test_eight_workers_env_bytes_from_the_manager(env_cache: Path, tmp_path: Path,
                                                  mode: str) -> None:
    delivery = {"manager": "manager", "foremen": "manager",
                "shared": SharedDir(str(tmp_path / "shared")),
                "url": Url(base="http://127.0.0.1:0", serve=True)}[mode]
    with running(env_cache, tmp_path, delivery) as (ex, cluster):
        port = ex._manager.port
        caches = {}
        for i in range(8):
            # manager, shared: a node cache per worker; url, foremen: 2 nodes of 4 workers
            node = f"node{i // 4}" if mode in ("url", "foremen") else f"node{i}"
            caches[i] = str(tmp_path / "nodes" / node / "cache")
        if mode == "foremen":
            foremen = [cluster.foreman(port, f"foreman{k}") for k in range(2)]
            for i in range(8):
                cluster.worker(foremen[i // 4], f"w{i}", caches[i])
            cluster.wait_connected(tmp_path / "runinfo", 2)
            time.sleep(3)  # the foremen's own workers (the manager does not see them)
        else:
            for i in range(8):
                cluster.worker(port, f"w{i}", caches[i])
            cluster.wait_connected(tmp_path / "runinfo", 8)
        probe = _probe_app()
        # Work Queue prefers workers that already hold a task's cached inputs, so without a
        # barrier a worker that got the env first can take a second task and another none
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        args = (str(barrier),) if mode == "manager" else ()
        results = [f.result(timeout=600) for f in [probe(i, *args) for i in range(8)]]
    _check_results(results, set(caches.values()))
    used = {r[3] for r in results}
    sent = env_bytes_sent(tmp_path / "runinfo")
    size = _env_size(env_cache)
    assert 50_000_000 <= size <= 100_000_000, size
    env_sent = sum(n for name, n in sent.items() if name.startswith("env-"))
    if mode == "manager":
        assert len(used) == 8, used  # one task per worker, so every worker needed the env
        assert env_sent == 8 * size, (sent, size)
    elif mode == "foremen":
        assert env_sent == 2 * size, (sent, size)
    else:
        assert sent == {}, sent  # neither env nor code layer bytes from the manager
        assert len(used) == (8 if mode == "shared" else 2), used
    if mode == "url":
        gets = ex._commands.server.gets
        env_gets = {n: c for n, c in gets.items() if "-env-" in n}
        assert list(env_gets.values()) == [2], gets  # one GET per node cache
    if mode == "shared":
        published = sorted(p.name for p in (tmp_path / "shared").iterdir())
        assert len(published) == 4, published  # env and code layer, each with its .sha256
        for cache in used:  # one checked copy of each on every node, nothing half-written
            fetched = sorted(p.name for p in Path(cache, "fetched").iterdir())
            assert fetched == sorted(n.split("-", 1)[0] for n in published
                                     if not n.endswith(".sha256")), fetched


@pytest.mark.parametrize("mode", ["shared", "url"])
def test_a_truncated_published_file_is_refused_then_served_again(env_cache: Path,
                                                                 tmp_path: Path,
                                                                 mode: str) -> None:
    shared = tmp_path / "shared"
    delivery = (SharedDir(str(shared), tries=2) if mode == "shared"
                else Url(base="http://127.0.0.1:0", publish_dir=str(shared), serve=True,
                         tries=2))
    with running(env_cache, tmp_path, delivery) as (ex, cluster):
        probe = _probe_app()
        first = cluster.worker(ex._manager.port, "w0", str(tmp_path / "cache0"))
        assert probe(3).result(timeout=600)[0] == 6
        first.terminate()
        first.wait(timeout=20)
        (published,) = [p for p in shared.glob("*-env-*.tar.gz")]
        good = published.read_bytes()
        published.write_bytes(good[: len(good) // 2])  # truncated on the origin
        cluster.worker(ex._manager.port, "w1", str(tmp_path / "cache1"))
        with pytest.raises(Exception, match="does not match its sha256") as info:
            probe(4).result(timeout=600)
        text = str(info.value)
        assert "publish it again" in text
        assert (str(published) if mode == "shared" else published.name) in text
        assert not list((tmp_path / "cache1" / "fetched").glob("*")), "nothing half-written"
        published.write_bytes(good)  # once the file is good, the next task runs
        assert probe(5).result(timeout=600)[0] == 15


def test_the_http_server_stopped_during_a_fetch_loses_no_task(env_cache: Path,
                                                              tmp_path: Path) -> None:
    from parsl_poncho.fileserver import _RateLimit

    with running(env_cache, tmp_path, Url(base="http://127.0.0.1:0", serve=True)) as (ex,
                                                                                    cluster):
        server = ex._commands.server
        server.limit = _RateLimit(10_000_000)  # slow enough to be caught mid-transfer
        server.stop()
        server.start()
        cluster.worker(ex._manager.port, "w0", str(tmp_path / "cache0"))
        futures = [_probe_app()(i) for i in range(3)]
        fetched = tmp_path / "cache0" / "fetched"
        deadline = time.monotonic() + 600
        while not list(fetched.glob("*.part.*")):
            assert time.monotonic() < deadline, "no fetch started"
            time.sleep(0.05)
        time.sleep(1)
        server.stop()  # as if it died: transfers in flight are cut
        time.sleep(2)
        server.limit = None
        server.start()
        results = [f.result(timeout=600) for f in futures]
    _check_results(results, {str(tmp_path / "cache0")})
    assert sum(c for n, c in server.gets.items() if "-env-" in n) >= 2


def test_serverless_tasks_fetch_their_env_the_same_way(env_cache: Path, tmp_path: Path) -> None:
    with running(env_cache, tmp_path, SharedDir(str(tmp_path / "shared")),
                 function_exec_mode="serverless") as (ex, cluster):
        cluster.worker(ex._manager.port, "w0", str(tmp_path / "cache0"))
        results = [f.result(timeout=600) for f in [_probe_app()(i) for i in range(3)]]
    _check_results(results, {str(tmp_path / "cache0")})
    assert env_bytes_sent(tmp_path / "runinfo") == {}
    assert list((tmp_path / "cache0").glob("*.server-v1-*")), "a function server ran the calls"
