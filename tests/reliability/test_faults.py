"""Fault injection: builders killed with SIGKILL, full disks, unreachable package sources, workers
killed mid-task and a submit process that dies.

Short versions run in CI (``slow`` where they build real envs); ``-m long`` runs the long ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from parsl_poncho.codehash import hash_code
from parsl_poncho.errors import BuildError
from parsl_poncho.spec import Spec
from parsl_poncho.store import EnvStore

from .conftest import (
    FAKE_ENV_MEMBERS,
    PYTHON,
    Member,
    check_entry,
    record,
    run_shim,
    sha256_file,
    start_workflow,
    write_tarball,
)

EXIT_UNPACK_FAILED = 67

# -- 1. builder killed with SIGKILL at random points ----------------------------------------------

# The child: one EnvStore.get with the real builder; every progress line goes to stdout.
BUILD_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    print("START", flush=True)
    from parsl_poncho.build import BuildOptions
    from parsl_poncho.spec import Spec
    from parsl_poncho.store import EnvStore
    cache, spec_json, channel, pkg = sys.argv[1:5]
    options = BuildOptions(channels=(channel,), cache_dir=Path(pkg), workdir=None, timeout=300)
    store = EnvStore(Path(cache), build_options=options,
                     progress=lambda line: print("PHASE", line, flush=True))
    env = store.get(Spec.from_dict(json.loads(spec_json))).result()
    print("DONE", env.hash, flush=True)
    """
)

_PHASE = re.compile(r"^PHASE \[\d+/\d+\] (\w+): (done in)?")

#: Where a trial aims its kill: (the line to wait for, the longest extra random delay).
KILL_TARGETS = (
    ("solve", 3.0),  # rattler fills the (cold) package cache and links the env
    ("pack", 1.5),
    ("pack done", 0.05),  # between the tarball and the publish: JSON files, fsync, rename
    ("START", 0.4),  # interpreter starting, imports, store opening
    ("solve", 0.5),  # solve + install in rattler's child process (warm cache)
    ("code", 0.05),
    ("pack", 1.0),
)


def trial_spec(work: Path, i: int) -> dict[str, Any]:
    """A spec with python and one local module of its own (a new hash per trial)."""
    module = work / f"trialmod_{i}.py"
    module.write_text(f"VALUE = {i}\n")
    return {
        "conda": {"channels": ["conda-forge"], "dependencies": [f"python={PYTHON}"]},
        "x-parsl-poncho": {"local": {f"trialmod_{i}": {"path": str(module),
                                                       "sha256": hash_code(module)}}},
    }


@dataclass
class ChildBuild:
    """A build in a child process (own process group) and the lines it printed, timestamped."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic(), "EOF"))
            self.cond.notify_all()

    def wait_for(self, target: str, timeout: float = 300) -> bool:
        """Wait until ``target`` ("START", a phase name, or "<phase> done") shows; False on EOF."""
        phase, _, done = target.partition(" ")
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, line in self.lines:
                    if line == "EOF" or line.startswith("DONE"):
                        return False
                    if phase == "START" and line == "START":
                        return True
                    m = _PHASE.match(line)
                    if m and m.group(1) == phase and bool(m.group(2)) == bool(done):
                        return True
                left = deadline - time.monotonic()
                assert left > 0, f"child never reached {target!r}: {self.lines[-5:]}"
                self.cond.wait(left)

    def last_phase(self) -> str:
        with self.cond:
            for _, line in reversed(self.lines):
                m = _PHASE.match(line)
                if m:
                    return m.group(1) + (" done" if m.group(2) else "")
                if line in ("START",) or line.startswith("DONE"):
                    return line.split()[0].lower()
        return "not started"


def start_build(cache: Path, spec: dict[str, Any], channel: Path, pkg: Path,
                tmpdir: Path | None = None) -> ChildBuild:
    env = dict(os.environ)
    if tmpdir is not None:  # the builder's $TMPDIR: a killed build must leave nothing there
        tmpdir.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD_CHILD, str(cache), json.dumps(spec), str(channel), str(pkg)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env=env,
    )
    child = ChildBuild(proc)
    threading.Thread(target=child.read, daemon=True).start()
    return child


def check_store(cache: Path) -> list[str]:
    """Every published entry is intact; nothing outside envs/ looks like an entry."""
    hashes = [check_entry(d) for d in sorted((cache / "envs").iterdir())]
    for d in (cache / "envs").iterdir():
        assert re.fullmatch(r"[0-9a-f]{64}", d.name), f"stray entry {d.name} in envs/"
    return hashes


def run_kill_trials(n: int, tmp_path: Path, channel: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    cache, pkg, work = tmp_path / "cache", tmp_path / "pkg-cache", tmp_path / "work"
    work.mkdir()
    stats: dict[str, Any] = {"killed": 0, "finished before kill": 0, "survived": 0,
                             "rebuilt": 0, "at": {}}
    for i in range(n):
        spec_dict = trial_spec(work, i)
        target, spread = KILL_TARGETS[i % len(KILL_TARGETS)] if i < len(KILL_TARGETS) else \
            rng.choice(KILL_TARGETS)
        child = start_build(cache, spec_dict, channel, pkg, tmp_path / "tmpdir")
        reached = child.wait_for(target)
        if reached:
            time.sleep(rng.uniform(0, spread))
        phase = child.last_phase()
        try:
            os.killpg(child.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.proc.wait(timeout=60)
        finished = any(line.startswith("DONE") for _, line in child.lines)
        if child.proc.returncode == -signal.SIGKILL and not finished:
            stats["killed"] += 1
            stats["at"][phase] = stats["at"].get(phase, 0) + 1
        else:
            stats["finished before kill"] += 1
        # No entry may be anything but complete, right after the kill.
        check_store(cache)
        spec = Spec.from_dict(spec_dict)
        with EnvStore(cache, build_options=_options(channel, pkg)) as store:
            published = store.lookup(store.key(spec))
            env = store.get(spec).result(timeout=600)
            if published is None:
                stats["rebuilt"] += 1
            assert env.sha256 == sha256_file(env.tarball)
            assert store.lookup(env.hash) == env
        with tarfile.open(env.tarball) as tar:
            member = next(n for n in tar.getnames() if n.endswith(f"trialmod_{i}.py"))
            payload = tar.extractfile(member)
            assert payload is not None and payload.read() == f"VALUE = {i}\n".encode()
        assert list((cache / "staging").glob(f"build-{env.hash}-*")) == []
        leaked = [p.name for p in (tmp_path / "tmpdir").iterdir()]
        assert leaked == [], f"the killed build left {leaked} in $TMPDIR (killed at {phase})"
        stats["survived"] += 1
    # After everything: every entry intact, every spec a hit, no builder leftovers anywhere.
    hashes = check_store(cache)
    assert len(hashes) == n
    with EnvStore(cache, build_options=_options(channel, pkg)) as store:
        for i in range(n):
            assert store.get(Spec.from_dict(trial_spec(work, i))).done()
        store.clean_staging()
    assert [p.name for p in (cache / "staging").iterdir()] == []
    return stats


def _options(channel: Path, pkg: Path) -> Any:
    from parsl_poncho.build import BuildOptions

    return BuildOptions(channels=(str(channel),), cache_dir=pkg, workdir=None, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "trials", [pytest.param(3, id="short"), pytest.param(28, id="long", marks=pytest.mark.long)]
)
def test_builder_killed_at_random_points(trials: int, tmp_path: Path,
                                         seeded_channel: Path) -> None:
    seed = int(os.environ.get("PARSL_PONCHO_FAULT_SEED", "7"))
    started = time.monotonic()
    stats = run_kill_trials(trials, tmp_path, seeded_channel, seed)
    at = ", ".join(f"{k}:{v}" for k, v in sorted(stats.pop("at").items()))
    record("faults: builder SIGKILL", injected=trials, killed=stats["killed"],
           survived=stats["survived"], rebuilt_after_kill=stats["rebuilt"],
           kill_points=at, seconds=time.monotonic() - started)
    assert stats["survived"] == trials
    assert stats["killed"] >= trials * 2 // 3, stats
    if trials >= 20:
        assert stats["killed"] >= 20, "fewer than 20 builds were killed mid-way"


# -- 2. disk full during a build and during an unpack ---------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("size", "phase"), [("16m", "solve|install"), ("56m", "pack")])
def test_disk_full_during_build(size: str, phase: str, tmpfs: Any, real_options: Any) -> None:
    disk = tmpfs("cache", size)
    cache = disk.path / "cache"
    spec = Spec(conda=(f"python={PYTHON}",))
    with EnvStore(cache, build_options=real_options) as store:
        with pytest.raises(BuildError, match=r"[Nn]o space left on device") as info:
            store.get(spec).result(timeout=600)
        assert info.value.step in phase.split("|")
        assert store.entries() == []
        assert store.lookup(store.key(spec)) is None
    assert list((cache / "envs").iterdir()) == []
    assert list((cache / "staging").iterdir()) == []
    assert disk.used_bytes() < 1 << 20, "the failed build left data behind"
    # With room again, the next build is clean.
    disk.resize("200m")
    with EnvStore(cache, build_options=real_options) as store:
        env = store.get(spec).result(timeout=600)
    assert check_store(cache) == [env.hash]
    record("faults: disk full", injected=1, survived=1)


def _unpack_leftovers(cache: Path) -> list[str]:
    """Anything in a worker cache that a later task could take for (part of) an environment."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.timeout(300)
def test_disk_full_during_unpack(tmpfs: Any, tmp_path: Path) -> None:
    disk = tmpfs("worker", "4m")
    cache = disk.path / "cache"
    big = Member("share/filler.bin", data=os.urandom(6 << 20))
    tarball = write_tarball(tmp_path / ("env-" + "b" * 64 + ".tar.gz"), (*FAKE_ENV_MEMBERS, big))
    result = run_shim("-e", tarball, "-s", sha256_file(tarball), "--", "true", cache=cache)
    assert result.returncode == EXIT_UNPACK_FAILED, result.stderr
    assert re.search(r"disk full|No space left", result.stderr), result.stderr
    assert _unpack_leftovers(cache) == [], result.stderr
    assert disk.used_bytes() < 256 << 10, (disk.used_bytes(), result.stderr)
    disk.resize("64m")
    result = run_shim("-e", tarball, "--", "sh", "-c", 'cat "$CONDA_PREFIX/share/data/hello.txt"',
                      cache=cache)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    ready = [p for p in cache.iterdir() if (p / ".poncho-ready").exists()]
    assert len(ready) == 1
    record("faults: disk full", injected=1, survived=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_disk_full_during_unpack_of_a_real_env(tmpfs: Any, tmp_path: Path,
                                               real_options: Any) -> None:
    with EnvStore(tmp_path / "cache", build_options=real_options) as store:
        env = store.get(Spec(conda=(f"python={PYTHON}",))).result(timeout=600)
    disk = tmpfs("worker", "24m")
    cache = disk.path / "cache"
    result = run_shim("-e", env.tarball, "-s", env.sha256, "--", "python", "-c", "print(1)",
                      cache=cache)
    assert result.returncode == EXIT_UNPACK_FAILED, result.stderr
    assert _unpack_leftovers(cache) == [], result.stderr
    disk.resize("200m")
    result = run_shim("-e", env.tarball, "-s", env.sha256, "--", "python", "-c",
                      "import sys; print(sys.prefix)", cache=cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(cache))
    record("faults: disk full", injected=1, survived=1)


# -- 3. package sources unreachable ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unreachable_conda_channel_names_it(closed_port: int, tmp_path: Path,
                                            real_options: Any) -> None:
    import dataclasses

    url = f"http://127.0.0.1:{closed_port}/my-channel"
    options = dataclasses.replace(real_options, channels=(url,))
    with EnvStore(tmp_path / "cache", build_options=options) as store:
        with pytest.raises(BuildError, match=re.escape(url)) as info:
            store.get(Spec(conda=(f"python={PYTHON}",))).result(timeout=600)
        assert info.value.step == "solve"
        assert store.entries() == []
    record("faults: source unreachable", injected=1, survived=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_unreachable_pip_index_names_it(closed_port: int, tmp_path: Path,
                                        real_options: Any) -> None:
    import dataclasses

    index = f"http://127.0.0.1:{closed_port}/simple"
    options = dataclasses.replace(real_options, index_url=index)
    spec = Spec(conda=(f"python={PYTHON}", "pip"), pip=("six==1.16.0",))
    with EnvStore(tmp_path / "cache", build_options=options) as store:
        with pytest.raises(BuildError, match=re.escape(f"127.0.0.1:{closed_port}")) as info:
            store.get(spec).result(timeout=600)
        assert info.value.step == "pip"
        assert store.entries() == []
    record("faults: source unreachable", injected=1, survived=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["http", "git"])
def test_unreachable_data_source_names_it(kind: str, closed_port: int, tmp_path: Path,
                                          real_options: Any) -> None:
    url = f"http://127.0.0.1:{closed_port}/data/thing" + (".git" if kind == "git" else ".csv")
    section = {"DATA": {"remote": url}} if kind == "git" else {"DATA": {"url": url}}
    spec = Spec.from_dict({"conda": {"dependencies": [f"python={PYTHON}"]}, kind: section})
    with EnvStore(tmp_path / "cache", build_options=real_options) as store:
        with pytest.raises(BuildError, match=re.escape(url)) as info:
            store.get(spec).result(timeout=600)
        assert info.value.step == "data"
        assert store.entries() == []
    record("faults: source unreachable", injected=1, survived=1)


# -- 4. a worker killed mid-task ----------------------------------------------------------------
def _wait_for_marks(marks: Path, count: int, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(p.name for p in marks.iterdir())
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} task attempts started"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("tasks", "kills"), [pytest.param(4, 1, id="short"),
                         pytest.param(24, 6, id="long", marks=pytest.mark.long)]
)
def test_worker_killed_mid_task_is_retried_with_the_right_result(
    tasks: int, kills: int, tmp_path: Path, seeded_channel: Path, shared_pkg_cache: Path,
    workers: Any,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    flow = start_workflow(
        tmp_path, seeded_channel, shared_pkg_cache, cache=tmp_path / "cache",
        run_dir=tmp_path / "runinfo", tasks=tasks, workers=0,
        extra=("--sleep", "6", "--marker-dir", str(marks), "--max-retries", str(kills + 3),
               "--print-results"),
    )
    try:
        port = flow.port()
        started = 0
        for _ in range(kills):
            victim = workers.start(port, 4)
            started = len(_wait_for_marks(marks, started + 1))  # a task runs on the victim
            time.sleep(0.5)
            os.kill(victim.pid, signal.SIGKILL)  # the worker only: its tasks are orphaned
            victim.wait(timeout=30)
        workers.start(port, 4)
        summary = flow.summary(timeout=1500)
    finally:
        flow.kill()
    attempts = len(list(marks.iterdir()))
    record("faults: worker SIGKILL mid-task", injected=kills, tasks=tasks,
           right=summary["right"], lost=summary["lost"], attempts=attempts)
    assert summary["right"] == tasks, summary
    assert summary["lost"] == summary["wrong"] == summary["failed"] == 0
    assert attempts > tasks, "no task was retried after its worker died"
    record("faults: worker SIGKILL mid-task", survived=kills)


# -- 5. the submit process dies; the workflow is restarted --------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("restarts", [pytest.param(1, id="short"),
                                      pytest.param(4, id="long", marks=pytest.mark.long)])
def test_restarted_workflow_reuses_cached_envs(restarts: int, tmp_path: Path,
                                               seeded_channel: Path, shared_pkg_cache: Path,
                                               workers: Any) -> None:
    cache, tasks = tmp_path / "cache", 30

    def run(n: int, *, kill_after: int | None) -> Any:
        flow = start_workflow(tmp_path, seeded_channel, shared_pkg_cache, cache=cache,
                              run_dir=tmp_path / f"run{n}", tasks=tasks, workers=0,
                              extra=("--sleep", "0.2", "--print-results"))
        worker = workers.start(flow.port(), 2)
        try:
            if kill_after is not None:
                flow.wait_line("RESULT ", kill_after)
                flow.kill()  # SIGKILL to the submit process and its manager process
                return flow
            return flow, flow.summary(timeout=1500)
        finally:
            flow.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)

    first = run(0, kill_after=3 + 5)  # RESULT 0..2 need all three envs
    assert first.proc.returncode == -signal.SIGKILL
    built = sorted(first.builds())
    assert len(built) == 1  # the three envs share one base (they differ by local code only)
    stamps = {h: _stamp(cache, h) for h in built}
    for n in range(1, restarts + 1):
        if n < restarts:  # die again, part way through
            again = run(n, kill_after=4)
            assert again.builds() == []
            continue
        flow, summary = run(n, kill_after=None)
        assert flow.builds() == [], "a restarted workflow rebuilt a cached env"
        assert summary["right"] == tasks and summary["lost"] == 0, summary
        assert len(summary["envs"]) == 3 and set(built) <= set(summary["envs"])
    assert {h: _stamp(cache, h) for h in built} == stamps, "cached tarballs were rewritten"
    assert check_store(cache) == built
    assert [p.name for p in (cache / "staging").iterdir()] == []
    record("faults: submit process SIGKILL", injected=restarts, survived=restarts,
           rebuilds_after_restart=0, envs_reused=3 * restarts)


def _stamp(cache: Path, env_hash: str) -> tuple[int, int]:
    st = (cache / "envs" / env_hash / f"env-{env_hash}.tar.gz").stat()
    return st.st_ino, st.st_mtime_ns


# -- 6. a cached tarball damaged on disk ----------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "emptied"])
def test_damaged_cache_entry_is_never_served_and_is_rebuilt(damage: str, tmp_path: Path) -> None:
    from .test_fuzz_specs import FakeBuilder

    builder = FakeBuilder()
    spec = Spec(conda=(f"python={PYTHON}",), pip=("six==1.16.0",))
    with EnvStore(tmp_path / "cache", builder=builder) as store:
        env = store.get(spec).result(timeout=60)
    data = bytearray(env.tarball.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncated":
        del data[len(data) // 2:]
    else:
        data.clear()
    env.tarball.write_bytes(bytes(data))
    with EnvStore(tmp_path / "cache", builder=builder) as store:
        again = store.get(spec).result(timeout=60)
        assert sha256_file(again.tarball) == again.sha256
        assert store.get(spec).result(timeout=60) == again
    assert builder.calls == 2
    assert check_store(tmp_path / "cache") == [env.hash]
    record("faults: damaged cache entry", injected=1, survived=1)


# -- 7. a data source that misbehaves mid-transfer ------------------------------------------------
@pytest.fixture()
def rude_server() -> Any:
    """A one-shot HTTP server on 127.0.0.1: ("cut", n) sends n of the promised bytes and hangs
    up; ("stall",) accepts and never answers."""
    import socket

    servers: list[socket.socket] = []

    def start(mode: str, n: int = 0) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        servers.append(srv)

        def serve() -> None:
            conn, _ = srv.accept()
            conn.recv(4096)
            if mode == "cut":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * n)
                conn.close()
            else:
                time.sleep(30)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}/data.bin"

    yield start
    for srv in servers:
        srv.close()


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_download_cut_or_stalled_is_a_clear_error(mode: str, rude_server: Any,
                                                  tmp_path: Path) -> None:
    from parsl_poncho.build.data import download

    url = rude_server(mode, 5000)
    pattern = r"ended after 5000 of 100000 bytes" if mode == "cut" else r"could not download"
    with pytest.raises(BuildError, match=pattern) as info:
        download("DATA", url, tmp_path / "data.bin", None, timeout=2)
    assert url in str(info.value) and info.value.step == "data"
    record("faults: data source misbehaving", injected=1, survived=1)


# -- 8. executor-level faults: the manager process dies; a worker's disk is full ------------------
def _wait_for_sent_tasks(executor: Any, count: int, timeout: float = 600) -> None:
    """Until ``count`` tasks were handed to the Work Queue manager (their env is ready)."""
    deadline = time.monotonic() + timeout
    while len(executor._manager.sent) < count:
        assert time.monotonic() < deadline, "tasks were never sent to Work Queue"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_manager_process_killed_is_restarted_and_tasks_finish_right(
    tmp_path: Path, seeded_channel: Path, shared_pkg_cache: Path, workers: Any
) -> None:
    import parsl

    from .conftest import external_worker_executor

    @parsl.python_app
    def slow_square(x: int) -> int:
        import time

        time.sleep(4)
        return x * x

    executor, config = external_worker_executor(tmp_path, seeded_channel, shared_pkg_cache)
    kills = 2
    with parsl.load(config):
        workers.start(executor._manager.port, 2)
        port = executor._manager.port
        futures = [slow_square(i) for i in range(6)]
        for _ in range(kills):
            _wait_for_sent_tasks(executor, 1)
            time.sleep(2)  # let Work Queue hand some of them to the worker
            dead = executor._manager.process
            os.kill(dead.pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while executor._manager.process is dead:
                assert time.monotonic() < deadline, "the manager was not restarted"
                time.sleep(0.2)
        results = [f.result(timeout=600) for f in futures]
        assert executor._manager.port == port
    assert results == [i * i for i in range(6)]
    record("faults: Work Queue manager SIGKILL", injected=kills, survived=kills, tasks=6,
           right=sum(r == i * i for i, r in enumerate(results)), lost=0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_manager_killed_without_restarts_left_fails_tasks_clearly(
    tmp_path: Path, seeded_channel: Path, shared_pkg_cache: Path, workers: Any
) -> None:
    import parsl
    from parsl.executors.errors import BadStateException

    from .conftest import external_worker_executor

    @parsl.python_app
    def slow(x: int) -> int:
        import time

        time.sleep(30)
        return x

    executor, config = external_worker_executor(tmp_path, seeded_channel, shared_pkg_cache,
                                                manager_restarts=0)
    with parsl.load(config):
        workers.start(executor._manager.port, 2)
        futures = [slow(i) for i in range(2)]
        _wait_for_sent_tasks(executor, 2)
        time.sleep(1)
        os.kill(executor._manager.process.pid, signal.SIGKILL)
        started = time.monotonic()
        for future in futures:  # Parsl wraps our ExecutorError in its BadStateException
            with pytest.raises(BadStateException, match=r"manager process died") as info:
                future.result(timeout=60)
            assert "after 0 restarts (manager_restarts=0)" in str(info.value)
        waited = time.monotonic() - started
    record("faults: Work Queue manager SIGKILL, no restarts left", injected=1, survived=1,
           seconds_to_fail_tasks=waited)
    assert waited < 30


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_worker_disk_full_fails_the_task_with_a_clear_error(
    tmp_path: Path, seeded_channel: Path, shared_pkg_cache: Path, tmpfs: Any
) -> None:
    import parsl

    from parsl_poncho.errors import ExecutorError

    from .conftest import Workers, external_worker_executor

    disk = tmpfs("node", "8m")
    pool = Workers(disk.path / "cache")

    @parsl.python_app
    def one() -> int:
        return 1

    executor, config = external_worker_executor(tmp_path, seeded_channel, shared_pkg_cache,
                                                max_retries=1)
    try:
        with parsl.load(config):
            pool.start(executor._manager.port, 1)
            with pytest.raises(ExecutorError, match=r"exit status 67 .*disk full") as info:
                one().result(timeout=600)
            assert "No space left on device" in str(info.value) or "disk full" in str(info.value)
    finally:
        pool.close()
    assert _unpack_leftovers(disk.path / "cache") == []
    record("faults: disk full", injected=1, survived=1)


# -- 6. serverless mode: function servers killed mid-run -----------------------------------------


def _server_pids(worker_cache: Path) -> list[int]:
    pids = []
    for pid_file in worker_cache.glob("*.server-v1/pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pid_file.read_text().split()[0]))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_function_servers_killed_mid_run_lose_no_task(
    tmp_path: Path, seeded_channel: Path, shared_pkg_cache: Path, workers: Any
) -> None:
    import parsl

    from .conftest import external_worker_executor

    @parsl.python_app
    def slow_square(x: int) -> tuple[int, str]:
        import os
        import time

        time.sleep(1.5)
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return x * x, f.read().decode(errors="replace")

    executor, config = external_worker_executor(tmp_path, seeded_channel, shared_pkg_cache,
                                                function_exec_mode="serverless")
    tasks, kills, killed = 12, 2, []
    with parsl.load(config):
        workers.start(executor._manager.port, 2)
        futures = [slow_square(i) for i in range(tasks)]
        for _ in range(kills):
            deadline = time.monotonic() + 300
            while not (live := [p for p in _server_pids(workers.cache) if p not in killed]):
                assert time.monotonic() < deadline, "no function server started"
                time.sleep(0.2)
            time.sleep(1.0)  # calls are running in it now
            os.kill(live[0], signal.SIGKILL)
            killed.append(live[0])
        results = [f.result(timeout=600) for f in futures]
    assert [value for value, _ in results] == [i * i for i in range(tasks)]
    served = sum("function_server.py" in parent for _, parent in results)
    assert 0 < served < tasks, "calls should be served, and some rerun in regular mode"
    record("faults: function server SIGKILL", injected=kills, tasks=tasks, lost=0,
           right=tasks, served_by_a_server=served)
