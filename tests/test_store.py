"""Tests for parsl_poncho.store: hits, one build per hash across threads and processes, atomic
publish under SIGKILL, failures, eviction, and the `parsl-poncho cache` command."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from parsl_poncho.cli.main import main as poncho_main
from parsl_poncho.errors import BuildError, SpecError, StoreError
from parsl_poncho.spec import GitData, HttpData, Spec
from parsl_poncho.store import Env, EnvStore

TESTS = Path(__file__).parent
PYTHON = ".".join(str(v) for v in sys.version_info[:3])


def make_spec(tag: str = "a", extra_pip: tuple[str, ...] = ()) -> Spec:
    """A valid spec; ``tag`` makes distinct hashes."""
    return Spec(conda=(f"python={PYTHON}", "pip"), pip=(f"pkg-{tag}==1.0", *extra_pip))


@dataclass
class FakeManifest:
    spec: dict[str, Any]
    pid: int

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "pid": self.pid, "lock": {"conda": [{"name": "python"}]}}


class FakeBuilder:
    """Stands in for build_env: records each call in ``<log_dir>/builds`` (across processes),
    optionally writes a partial tarball and sleeps (to be killed), fails, or pads the output."""

    def __init__(
        self,
        log_dir: Path,
        *,
        sleep: float = 0.0,
        fail: BaseException | None = None,
        padding: int = 0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.sleep = sleep
        self.fail = fail
        self.padding = padding

    def __call__(
        self,
        spec: Spec,
        output: Path,
        *,
        options: Any = None,
        progress: Callable[[str], None] | None = None,
    ) -> FakeManifest:
        with open(self.log_dir / "builds", "a") as log:
            log.write(f"{os.getpid()} {spec.hash()}\n")
        if progress:
            progress("fake: building")
        output.write_bytes(b"partial tarball")  # what a kill mid-way leaves behind
        (self.log_dir / "started").touch()
        time.sleep(self.sleep)
        if self.fail is not None:
            raise self.fail
        payload = output.with_name("payload.json")
        payload.write_text(spec.canonical_json() + " " * self.padding)
        tmp = output.with_name(output.name + ".part")
        with tarfile.open(tmp, "w:gz", compresslevel=0) as tar:
            tar.add(payload, arcname="payload.json")
        payload.unlink()
        os.replace(tmp, output)
        return FakeManifest(spec=spec.to_dict(), pid=os.getpid())


def build_count(log_dir: Path) -> int:
    path = log_dir / "builds"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture()
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _store(cache: Path, builder: Any, **kw: Any) -> EnvStore:
    return EnvStore(cache, builder=builder, **kw)


# Child process: builds ``make_spec(TAG)`` with a FakeBuilder, after a barrier.
CHILD = textwrap.dedent(
    """
    import sys, time, json
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_store import FakeBuilder, make_spec
    from parsl_poncho.store import EnvStore
    cache, logs, tag, sleep, ready, go = sys.argv[1:7]
    store = EnvStore(Path(cache), builder=FakeBuilder(Path(logs), sleep=float(sleep)))
    Path(ready).touch()
    while go != "-" and not Path(go).exists():
        time.sleep(0.01)
    env = store.get(make_spec(tag)).result(timeout=120)
    print(json.dumps({{"hash": env.hash, "sha256": env.sha256}}))
    store.close()
    """
).format(tests=str(TESTS))


def start_child(
    cache: Path, logs: Path, tag: str, sleep: float, ready: Path, go: str = "-"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache), str(logs), tag, str(sleep), str(ready), go],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    path: Path, timeout: float = 60.0, child: subprocess.Popen[str] | None = None
) -> None:
    """Wait for ``path``; fail at once, with its output, if ``child`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child is not None and child.poll() is not None:
            out, err = child.communicate()
            pytest.fail(f"child exited {child.returncode} before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


# -- creating the cache ------------------------------------------------------------------------
def test_many_stores_creating_one_new_cache_at_once(tmp_path: Path) -> None:
    """Processes that start together race to create the cache: none of them may fail."""
    errors: list[BaseException] = []
    for trial in range(20):
        cache = tmp_path / f"trial-{trial}" / "cache"
        barrier = threading.Barrier(8)

        def open_store(cache: Path = cache, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                EnvStore(cache).close()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert errors == []


# -- hits and one build per hash -------------------------------------------------------------
def test_same_spec_twice_second_is_a_hit(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        first = store.get(make_spec()).result(timeout=30)
        second_future = store.get(make_spec())
        assert second_future.done()
        assert second_future.result() == first
    assert build_count(logs) == 1
    assert first.tarball.name == f"env-{first.hash}.tar.gz"
    assert first.tarball.parent == cache / "envs" / first.hash
    assert first.manifest["pid"] == os.getpid()
    # a new store (another process, later) also hits
    with _store(cache, FakeBuilder(logs)) as again:
        assert again.get(make_spec()).result() == first
    assert build_count(logs) == 1


def test_equivalent_spelling_is_the_same_entry(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        a = store.get(Spec(conda=("pip", f"python={PYTHON}"), pip=("Pkg_A==1.0",))).result()
        b = store.get(make_spec("a")).result()
    assert a == b
    assert build_count(logs) == 1


@pytest.mark.timeout(180)
def test_eight_threads_and_two_processes_build_once(cache: Path, logs: Path) -> None:
    go = logs / "go"
    ready = [logs / "ready-0", logs / "ready-1"]
    children = [start_child(cache, logs, "shared", 2.0, r, str(go)) for r in ready]
    for r, child in zip(ready, children):
        wait_for(r, child=child)
    store = _store(cache, FakeBuilder(logs, sleep=2.0), max_parallel_builds=4)
    results: list[Env] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            results.append(store.get(make_spec("shared")).result(timeout=120))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    outs = [child.communicate(timeout=150) for child in children]
    store.close()
    assert not errors
    assert [child.returncode for child in children] == [0, 0], outs
    child_results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len(results) == 8
    assert len({(e.hash, e.sha256) for e in results}) == 1
    assert all(r == {"hash": results[0].hash, "sha256": results[0].sha256} for r in child_results)
    assert build_count(logs) == 1


# -- atomic publish --------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_build_killed_mid_way_leaves_nothing_and_next_get_builds(cache: Path, logs: Path) -> None:
    child = start_child(cache, logs, "killed", 600.0, logs / "ready")
    wait_for(logs / "started", child=child)
    # the partial tarball exists in staging right now
    partial = list((cache / "staging").glob("build-*/env-*.tar.gz"))
    assert len(partial) == 1 and partial[0].read_bytes() == b"partial tarball"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    spec = make_spec("killed")
    with _store(cache, FakeBuilder(logs)) as store:
        assert store.lookup(store.key(spec)) is None
        assert store.entries() == []
        env = store.get(spec).result(timeout=60)
        assert build_count(logs) == 2  # the killed attempt and one clean build
        assert list((cache / "staging").iterdir()) == []
        with tarfile.open(env.tarball) as tar:
            payload = tar.extractfile("payload.json")
            assert payload is not None
            assert payload.read().decode().strip() == spec.canonical_json()
        assert store.entries() == [env]


def test_failed_build_raises_with_step_and_log_and_leaves_nothing(cache: Path, logs: Path) -> None:
    failure = BuildError(
        "pip could not install broken-pkg", step="pip", package="broken-pkg", log_tail="boom"
    )
    with _store(cache, FakeBuilder(logs, fail=failure)) as store:
        future = store.get(make_spec("fails"))
        with pytest.raises(BuildError, match=r"pip could not install broken-pkg") as info:
            future.result(timeout=30)
        assert (info.value.step, info.value.package, info.value.log_tail) == (
            "pip",
            "broken-pkg",
            "boom",
        )
        assert store.entries() == []
        assert list((cache / "staging").iterdir()) == []
    with _store(cache, FakeBuilder(logs)) as store:
        assert store.get(make_spec("fails")).result(timeout=30).size > 0
    assert build_count(logs) == 2


def test_unexpected_builder_exception_is_wrapped(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs, fail=ValueError("disk on fire"))) as store:
        with pytest.raises(BuildError, match=r"failed: ValueError: disk on fire") as info:
            store.get(make_spec("odd")).result(timeout=30)
    assert info.value.step == "store"
    assert "ValueError: disk on fire" in info.value.log_tail
    assert isinstance(info.value.__cause__, ValueError)


def test_builder_that_writes_no_tarball_is_an_error(cache: Path) -> None:
    def lazy(spec: Spec, output: Path, **_: Any) -> dict[str, Any]:
        return {}

    with _store(cache, lazy) as store:
        with pytest.raises(BuildError, match=r"returned without writing env-"):
            store.get(make_spec()).result(timeout=30)
        assert store.entries() == []


def test_corrupt_entry_is_not_returned_and_is_rebuilt(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        env = store.get(make_spec()).result(timeout=30)
        (env.tarball.parent / "entry.json").write_text("{not json")
    with _store(cache, FakeBuilder(logs)) as store:
        assert store.lookup(env.hash) is None
        rebuilt = store.get(make_spec()).result(timeout=30)
        assert rebuilt.hash == env.hash
        assert store.lookup(env.hash) == rebuilt
    assert build_count(logs) == 2


# -- bad input -------------------------------------------------------------------------------
BAD_SPECS = {
    "wrong types": Spec(conda=(3,), pip=(None,)),  # type: ignore[arg-type]
    "malformed match spec": Spec(conda=("numpy=>1",)),
    "malformed pip requirement": Spec(pip=("numpy=>1",)),
    "refused git remote": Spec(git={"DATA": GitData("ext::sh -c 'touch /tmp/pwned'")}),
    "refused git ref": Spec(git={"DATA": GitData("https://example.org/r.git", "--upload-pack=x")}),
    "bad sha256": Spec(http={"DB": HttpData("https://example.org/db", sha256="abc")}),
}
BAD_MESSAGES = {
    "wrong types": r"conda\.dependencies\[0\]: 3 is not of type",
    "malformed match spec": r"'numpy=>1' is not a valid match spec",
    "malformed pip requirement": r"'numpy=>1' is not a valid pip requirement",
    "refused git remote": r"git\.DATA\.remote: .* is refused",
    "refused git ref": r"git\.DATA\.ref: '--upload-pack=x' is refused",
    "bad sha256": r"http\.DB\.sha256: 'abc' is not a sha256 digest",
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_before_any_build(case: str, cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        with pytest.raises(SpecError, match=BAD_MESSAGES[case]):
            store.get(BAD_SPECS[case])
        assert store.entries() == []
    assert build_count(logs) == 0
    assert list((cache / "envs").iterdir()) == []
    assert list((cache / "staging").iterdir()) == []


@pytest.mark.parametrize(
    "case", ["unknown_section", "wrong_types", "malformed_match_spec", "refused_git_remote_ext"]
)
def test_bad_spec_files_never_reach_the_store(case: str, cache: Path, logs: Path) -> None:
    with pytest.raises(SpecError, match=r"Invalid environment spec"):
        Spec.from_file(TESTS / "specs" / "bad" / case / "spec.json")
    assert not cache.exists()


# -- use and eviction ------------------------------------------------------------------------
def _build_three(store: EnvStore) -> list[Env]:
    envs = []
    for tag in ("old", "mid", "new"):
        envs.append(store.get(make_spec(tag)).result(timeout=30))
        time.sleep(0.02)  # distinct last-used times
    return envs


def test_prune_evicts_least_recently_used_first(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs, padding=200_000)) as store:
        old, mid, new = _build_three(store)
        with store.use(old):  # touched: now the most recent, and in use
            pass
        one = store.entry_size(new.hash)
        evicted = store.prune(2 * one + one // 2)
        assert evicted == [mid.hash]
        assert [e.hash for e in store.entries()] == [new.hash, old.hash]


def test_prune_never_removes_an_entry_in_use(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        old, mid, new = _build_three(store)
        with store.use(old):
            assert store.in_use(old.hash)
            evicted = store.prune(0)
            assert set(evicted) == {mid.hash, new.hash}
            assert store.entries() == [old]
            with pytest.raises(StoreError, match=r"in use by a running process"):
                store.remove(old.hash)
        assert not store.in_use(old.hash)
        assert store.prune(0) == [old.hash]


def test_use_held_by_another_process_blocks_removal(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        env = store.get(make_spec()).result(timeout=30)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from parsl_poncho.store import EnvStore\n"
            "store = EnvStore(Path(sys.argv[1]))\n"
            "with store.use(sys.argv[2]):\n"
            "    Path(sys.argv[3]).touch(); time.sleep(60)\n",
            str(cache),
            env.hash,
            str(logs / "holding"),
        ]
    )
    try:
        wait_for(logs / "holding")
        assert poncho_main(["cache", "--cache-dir", str(cache), "rm", env.hash[:10]]) == 1
        assert poncho_main(["cache", "--cache-dir", str(cache), "prune", "--max-size", "0"]) == 0
        with _store(cache, None) as store:
            assert store.lookup(env.hash) == env
    finally:
        holder.kill()
        holder.wait()
    assert poncho_main(["cache", "--cache-dir", str(cache), "rm", env.hash[:10]]) == 0
    assert not (cache / "envs" / env.hash).exists()


def test_use_of_a_removed_entry_says_to_get_again(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        env = store.get(make_spec()).result(timeout=30)
        assert store.remove(env.hash)
        assert not store.remove(env.hash)
        with pytest.raises(StoreError, match=r"call EnvStore.get\(spec\) again"):
            with store.use(env):
                pass
        # and get() rebuilds it rather than returning the memoised Env
        assert store.get(make_spec()).result(timeout=30).tarball.is_file()
    assert build_count(logs) == 2


def test_max_size_evicts_automatically_but_keeps_the_new_entry(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs), max_size=1) as store:
        first = store.get(make_spec("one")).result(timeout=30)
        second = store.get(make_spec("two")).result(timeout=30)
        store.close()  # waits for the post-publish eviction
        assert store.entries() == [second]
        assert store.lookup(first.hash) is None


def test_stale_staging_is_cleaned_only_when_its_builder_is_gone(cache: Path, logs: Path) -> None:
    from parsl_poncho.filelocks import flock

    with _store(cache, FakeBuilder(logs)) as store:
        live, dead = "a" * 64, "b" * 64
        for h in (live, dead):
            (cache / "staging" / f"build-{h}-x").mkdir()
        with flock(cache / "locks" / f"{live}.build", __import__("fcntl").LOCK_EX):
            removed = store.clean_staging()
        assert [p.name for p in removed] == [f"build-{dead}-x"]
        assert (cache / "staging" / f"build-{live}-x").exists()


def test_cache_dir_is_private(cache: Path) -> None:
    EnvStore(cache, builder=FakeBuilder(cache.parent)).close()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_closed_store_refuses_get(cache: Path, logs: Path) -> None:
    store = _store(cache, FakeBuilder(logs))
    store.close()
    with pytest.raises(StoreError, match=r"closed"):
        store.get(make_spec())


def test_cancelling_one_waiter_does_not_cancel_the_build(cache: Path, logs: Path) -> None:
    with _store(cache, FakeBuilder(logs, sleep=0.5)) as store:
        store._pool.submit(time.sleep, 0.3)  # keep the build queued so cancel() can succeed
        first = store.get(make_spec())
        second = store.get(make_spec())
        assert first.cancel()
        assert second.result(timeout=30).size > 0
    assert build_count(logs) == 1


# -- the CLI ---------------------------------------------------------------------------------
def test_cache_cli_ls_rm_prune(cache: Path, logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _store(cache, FakeBuilder(logs)) as store:
        old, mid, new = _build_three(store)
    assert poncho_main(["cache", "--cache-dir", str(cache), "ls"]) == 0
    out = capsys.readouterr().out
    assert out.index(old.hash[:16]) < out.index(mid.hash[:16]) < out.index(new.hash[:16])
    assert "3 entries" in out and "1 conda, 0 pip" in out
    assert poncho_main(["cache", "--cache-dir", str(cache), "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["hash"] for r in rows] == [old.hash, mid.hash, new.hash]
    assert poncho_main(["cache", "--cache-dir", str(cache), "rm", mid.hash]) == 0
    assert f"removed {mid.hash}" in capsys.readouterr().out
    assert poncho_main(["cache", "--cache-dir", str(cache), "rm", "ffff0000"]) == 1
    assert "matches no entry" in capsys.readouterr().out
    assert poncho_main(["cache", "--cache-dir", str(cache), "prune", "--max-size", "0"]) == 0
    assert "2 evicted" in capsys.readouterr().out
    assert list((cache / "envs").iterdir()) == []


def test_cache_cli_rejects_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match=r"2"):
        poncho_main(["cache", "prune", "--max-size", "lots"])
    assert "is not a size" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size"), [("0", 0), ("1024", 1024), ("2K", 2048), ("1.5G", 1536 * 1024**2)]
)
def test_parse_size(text: str, size: int) -> None:
    from parsl_poncho.cli._cache import parse_size

    assert parse_size(text) == size


# -- with the real builder -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_build_then_hit(tmp_path: Path, build_options: Any) -> None:
    import dataclasses

    options = dataclasses.replace(build_options, workdir=None)
    spec = Spec(conda=(f"python={PYTHON}",))
    with EnvStore(tmp_path / "cache", build_options=options) as store:
        started = time.monotonic()
        env = store.get(spec).result(timeout=900)
        built = time.monotonic() - started
        started = time.monotonic()
        again = store.get(spec)
        assert again.done() and again.result() == env
        assert time.monotonic() - started < built / 5  # a hit checks the tarball, never builds
    assert env.size == env.tarball.stat().st_size > 1_000_000
    assert env.manifest["hash"] == env.hash
    assert any(p["name"] == "python" for p in env.manifest["lock"]["conda"])
    with tarfile.open(env.tarball) as tar:
        assert any(n.endswith("bin/python") for n in tar.getnames())
    assert list((tmp_path / "cache" / "staging").iterdir()) == []
