"""Security: tar traversal and link attacks on the worker shim, option injection in git sources,
sha256 checks of http data and of env tarballs on the worker, private cache and unpack
directories, and Work Queue's password file.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from tools import require, require_tool

from parsl_poncho.errors import BuildError, SpecError
from parsl_poncho.spec import GitData, HttpData, Spec
from parsl_poncho.store import EnvStore

from .conftest import (
    FAKE_ENV_MEMBERS,
    PYTHON,
    Member,
    check_entry,
    record,
    run_shim,
    sha256_file,
    tree_snapshot,
    umask,
    write_tarball,
)

EXIT_USAGE, EXIT_CORRUPT, EXIT_UNSAFE = 64, 65, 66

# -- tar traversal and link attacks on poncho_run -------------------------------------------------


def attack_members(node: Path) -> dict[str, list[Member]]:
    """Crafted members, by attack. The worker cache is ``node/cache``; extraction happens in
    ``node/cache/<key>.partial.<pid>``, so ``../../x`` means ``node/x``."""
    secret = str(node / "secret.txt")
    return {
        "absolute file": [Member(str(node / "abs-pwned.txt"), data=b"pwned")],
        "dotdot file": [Member("../../dotdot-pwned.txt", data=b"pwned")],
        "dotdot inside path": [Member("lib/../../../dotdot2-pwned.txt", data=b"pwned")],
        "long name with dotdot": [Member("a" * 180 + "/../../../../long-pwned.txt", data=b"x")],
        "newline forging a listing line": [Member(
            "ok\n-rw-r--r-- 0/0 5 2023-11-14 22:13 ../../nl-pwned.txt", data=b"pwned")],
        "symlink absolute": [Member("lib/evil", "symlink", target=str(node))],
        "symlink climbing": [Member("lib/evil", "symlink", target="../../..")],
        "symlink then file through it": [
            Member("escape", "symlink", target=str(node)),
            Member("escape/through-pwned.txt", data=b"pwned"),
        ],
        "relative symlink then file through it": [
            Member("up", "symlink", target="../.."),
            Member("up/through2-pwned.txt", data=b"pwned"),
        ],
        "file replaced by a symlink": [
            Member("etc/conf", data=b"ok"),
            Member("etc/conf", "symlink", target=secret),
        ],
        "symlink hidden in its name": [Member("x -> y", "symlink", target=str(node))],
        "hardlink absolute": [Member("lib/h", "hardlink", target=secret)],
        "hardlink dotdot": [Member("lib/h", "hardlink", target="../../secret.txt")],
        "hardlink name hiding an absolute target": [
            Member("a -> b", "hardlink", target=secret)],
        "hardlink name hiding a climbing target": [
            Member("a link to b", "hardlink", target="../../secret.txt")],
        "hardlink via escaping symlink": [
            Member("s", "symlink", target=str(node)),
            Member("h", "hardlink", target="s/secret.txt"),
        ],
        "character device": [Member("dev/mem", "chardev")],
        "fifo": [Member("run/fifo", "fifo")],
    }


ATTACKS = sorted(attack_members(Path("/x")))
NEUTRALISED_BY_BUSYBOX = {"absolute file", "dotdot file", "dotdot inside path",
                          "long name with dotdot", "newline forging a listing line"}


def _tar_flavours() -> list[Any]:
    flavours: list[Any] = [pytest.param("gnu", id="gnu-tar")]
    flavours.append(pytest.param("busybox", id="busybox-tar"))
    return flavours


BUSYBOX_TOOLS = ("sh", "tar", "gzip", "awk", "sed", "tr", "mkdir", "rm", "mv", "cat", "tail",
                 "wc", "du", "find", "ls", "sleep", "date", "cut", "uname", "id", "chmod",
                 "sha256sum", "printf", "rmdir", "true", "dirname", "head", "env", "flock",
                 "touch")


def busybox_path(tmp_path: Path) -> str:
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir(exist_ok=True)
    busybox = require_tool("busybox")
    for tool in BUSYBOX_TOOLS:
        if not (bindir / tool).exists():
            (bindir / tool).symlink_to(busybox)
    return str(bindir)


@pytest.mark.parametrize("flavour", _tar_flavours())
@pytest.mark.parametrize("attack", ATTACKS)
def test_tar_attack_is_refused_and_writes_nothing_outside(attack: str, flavour: str,
                                                           tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (node / "secret.txt").write_text("do not touch\n")
    cache = node / "cache"
    tarball = write_tarball(tmp_path / f"env-{'c' * 64}.tar.gz",
                            [*FAKE_ENV_MEMBERS, *attack_members(node)[attack]])
    before = tree_snapshot(tmp_path)
    kwargs: dict[str, Any] = {}
    if flavour == "busybox":
        kwargs = {"path": busybox_path(tmp_path), "shell": str(Path(busybox_path(tmp_path),
                                                                    "sh"))}
        before = tree_snapshot(tmp_path)
    result = run_shim("-e", tarball, "--", "sh", "-c", 'touch "$CONDA_PREFIX/task-ran"',
                      cache=cache, **kwargs)
    if flavour == "busybox" and attack in NEUTRALISED_BY_BUSYBOX and result.returncode == 0:
        # busybox tar strips leading '/' and '../' when listing *and* extracting: the member
        # lands inside the environment, which is what the checks below verify.
        record("bad input: tar attacks on the shim", neutralised_by_busybox=1)
    else:
        assert result.returncode == EXIT_UNSAFE, (result.returncode, result.stderr)
        assert "unsafe archive" in result.stderr
        assert not [p for p in cache.iterdir() if (p / ".poncho-ready").exists()]
        assert not list(cache.rglob("task-ran")), "the task ran in a refused environment"
        record("bad input: tar attacks on the shim", refused=1)
    after = tree_snapshot(tmp_path)
    changed = {k for k in set(before) | set(after)
               if before.get(k) != after.get(k) and not k.startswith("node/cache")
               and k != "node"}  # the cache's parent directory: only its mtime changes
    assert changed == set(), f"written outside the cache: {sorted(changed)}"
    assert os.stat(node / "secret.txt").st_nlink == 1
    assert not any(p.name.endswith("-pwned.txt") for p in tmp_path.rglob("*")
                   if not p.is_relative_to(cache))
    record("bad input: tar attacks on the shim", tried=1)


def test_safe_conda_pack_style_links_are_still_accepted(tmp_path: Path) -> None:
    members = [*FAKE_ENV_MEMBERS, Member("bin/python3", "symlink", target="python"),
               Member("lib/libx.so.1", data=b"\x7fELF"),
               Member("lib/libx.so", "symlink", target="libx.so.1"),
               Member("lib/python3.11/site-packages/up", "symlink", target="../../libx.so"),
               Member("bin/python3.11", "hardlink", target="bin/python")]
    tarball = write_tarball(tmp_path / f"env-{'d' * 64}.tar.gz", members)
    result = run_shim("-e", tarball, "--", "sh", "-c", 'cat "$CONDA_PREFIX/lib/libx.so"',
                      cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\x7fELF"


# -- integrity of env tarballs on the worker ------------------------------------------------------
def test_tampered_tarball_is_refused_before_use(tmp_path: Path, fake_env_tarball: Path) -> None:
    good = sha256_file(fake_env_tarball)
    tampered = tmp_path / "tampered" / fake_env_tarball.name
    tampered.parent.mkdir()
    raw = bytearray(gzip.decompress(fake_env_tarball.read_bytes()))
    raw[raw.index(b"exec /bin/sh")] ^= 0x20  # still a valid tar.gz, different content
    tampered.write_bytes(gzip.compress(bytes(raw)))
    cache = tmp_path / "cache"
    result = run_shim("-e", tampered, "-s", good, "--", "touch", str(tmp_path / "ran"),
                      cache=cache)
    assert result.returncode == EXIT_CORRUPT, result.stderr
    assert "sha256 mismatch" in result.stderr
    assert not (tmp_path / "ran").exists()
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []
    # a sidecar ENV.tar.gz.sha256 (as sha256sum writes it) counts as -s
    (tampered.parent / (tampered.name + ".sha256")).write_text(f"{good}  {tampered.name}\n")
    result = run_shim("-e", tampered, "--", "true", cache=cache)
    assert result.returncode == EXIT_CORRUPT, result.stderr
    # the genuine tarball with the same sha256 runs
    result = run_shim("-e", fake_env_tarball, "-s", good, "--", "true", cache=cache)
    assert result.returncode == 0, result.stderr
    record("security: tampered tarballs", tried=2, refused=2)


@pytest.mark.parametrize("mode", ["regular", "serverless"])
def test_executor_task_command_passes_the_sha256(mode: str) -> None:
    from parsl_poncho.exec_modes import WorkerCommands

    digest = "ab" * 32
    command = WorkerCommands({}).command(mode, "env-x.tar.gz", digest)  # type: ignore[arg-type]
    assert f"-s {digest}" in command
    assert command.startswith("./poncho_run -e env-x.tar.gz")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tampered_real_env_is_refused(tmp_path: Path, real_options: Any) -> None:
    with EnvStore(tmp_path / "cache", build_options=real_options) as store:
        env = store.get(Spec(conda=(f"python={PYTHON}",))).result(timeout=600)
    copy = tmp_path / "sent" / env.tarball.name
    copy.parent.mkdir()
    data = bytearray(env.tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    result = run_shim("-e", copy, "-s", env.sha256, "--", "python", "-c", "print(1)",
                      cache=tmp_path / "worker")
    assert result.returncode == EXIT_CORRUPT, result.stderr
    # without the sha256 the gzip CRC still catches a flipped byte
    result = run_shim("-e", copy, "--", "python", "-c", "print(1)", cache=tmp_path / "worker2")
    assert result.returncode == EXIT_CORRUPT, result.stderr


# -- private directories --------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_directories_are_private_even_with_umask_0(tmp_path: Path) -> None:
    from .test_fuzz_specs import FakeBuilder

    with umask(0):
        with EnvStore(tmp_path / "deep" / "cache", builder=FakeBuilder()) as store:
            env = store.get(Spec(conda=(f"python={PYTHON}",))).result(timeout=60)
    cache = tmp_path / "deep" / "cache"
    assert _mode(cache) == 0o700
    for sub in ("envs", "locks", "staging"):
        assert _mode(cache / sub) == 0o700, sub
    for lock in (cache / "locks").iterdir():
        assert _mode(lock) & 0o077 == 0, lock
    check_entry(env.tarball.parent)


def test_store_staging_dirs_are_private(tmp_path: Path) -> None:
    seen: list[int] = []

    def builder(spec: Spec, output: Path, **_: Any) -> dict[str, Any]:
        seen.append(_mode(output.parent))
        output.write_bytes(gzip.compress(b""))
        return {}

    with umask(0), EnvStore(tmp_path / "cache", builder=builder) as store:
        store.get(Spec(conda=("python",))).result(timeout=60)
    assert seen == [0o700]


@pytest.mark.parametrize("how", ["env var", "--cache-dir", "default under TMPDIR"])
def test_shim_cache_is_private_even_with_umask_0(how: str, tmp_path: Path,
                                                 fake_env_tarball: Path) -> None:
    cache = tmp_path / "node" / "cache"
    args: list[Any] = ["-e", fake_env_tarball]
    env: dict[str, str] = {}
    if how == "env var":
        env["PARSL_PONCHO_WORKER_CACHE"] = str(cache)
    elif how == "--cache-dir":
        args += ["--cache-dir", cache]
    else:
        env["TMPDIR"] = str(tmp_path / "node")
        cache = tmp_path / "node" / f"parsl-poncho-{os.getuid()}"
    (tmp_path / "node").mkdir()
    with umask(0):
        result = run_shim(*args, "--", "sh", "-c", 'echo "$CONDA_PREFIX"', env=env)
    assert result.returncode == 0, result.stderr
    prefix = Path(result.stdout.strip())
    assert prefix.parent == cache
    assert _mode(cache) == 0o700


@pytest.mark.parametrize("how", ["--cache-dir", "default under TMPDIR"])
def test_shim_refuses_a_cache_planted_by_another_user(how: str, tmp_path: Path,
                                                      fake_env_tarball: Path) -> None:
    require(os.geteuid() == 0, "chown to another user needs root")
    node = tmp_path / "node"
    node.mkdir(mode=0o1777)
    planted = node / f"parsl-poncho-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    if how == "--cache-dir":
        result = run_shim("-e", fake_env_tarball, "--cache-dir", planted, "--", "true")
    else:
        result = run_shim("-e", fake_env_tarball, "--", "true", env={"TMPDIR": str(node)})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "belongs to another user" in result.stderr
    assert list(planted.iterdir()) == []


def test_shim_refuses_a_symlinked_default_cache(tmp_path: Path, fake_env_tarball: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (node / f"parsl-poncho-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    result = run_shim("-e", fake_env_tarball, "--", "true", env={"TMPDIR": str(node)})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- option injection in git sources --------------------------------------------------------------
def injections(sentinel: Path) -> dict[str, GitData]:
    cmd = f"touch {sentinel}"
    return {
        "upload-pack remote": GitData(f"--upload-pack={cmd}"),
        "ssh option remote": GitData(f"-oProxyCommand={cmd}"),
        "ext transport": GitData(f"ext::sh -c {cmd.replace(' ', '% ')}"),
        "fd transport": GitData("fd::17"),
        "ssh host option": GitData(f"ssh://-oProxyCommand={cmd.replace(' ', '%20')}/repo"),
        "scp-like host option": GitData(f"-oProxyCommand={cmd.replace(' ', '_')}:repo"),
        "upload-pack ref": GitData(str(sentinel.parent / "repo"), f"--upload-pack={cmd}"),
        "config ref": GitData(str(sentinel.parent / "repo"), "-c"),
        "output ref": GitData(str(sentinel.parent / "repo"), f"--output={sentinel}"),
    }


INJECTIONS = sorted(injections(Path("/x/s")))


@pytest.mark.parametrize("case", INJECTIONS)
def test_git_option_injection_is_refused_by_validation(case: str, tmp_path: Path) -> None:
    item = injections(tmp_path / "sentinel")[case]
    data = {"conda": {"dependencies": ["python"]},
            "git": {"DATA": {"remote": item.remote, "ref": item.ref}}}
    with pytest.raises(SpecError, match=r"git\.DATA\.(remote|ref): .* is refused"):
        Spec.from_dict(data)
    record("bad input: git option injection", tried=1, refused=1)


@pytest.mark.parametrize("case", INJECTIONS)
def test_git_option_injection_is_refused_by_the_builder(case: str, tmp_path: Path) -> None:
    """A Spec constructed directly (never validated) still never reaches git with an option."""
    from parsl_poncho.build import BuildOptions, build_env

    sentinel = tmp_path / "sentinel"
    spec = Spec(conda=("python",), git={"DATA": injections(sentinel)[case]})
    options = BuildOptions(channels=(str(tmp_path / "no-channel"),), cache_dir=tmp_path / "c",
                           workdir=tmp_path / "w", timeout=60)
    with pytest.raises(BuildError, match=r"git\.DATA: .*refused") as info:
        build_env(spec, tmp_path / "env.tar.gz", options=options)
    assert info.value.step == "data"
    assert not sentinel.exists()
    assert not (tmp_path / "env.tar.gz").exists()
    record("bad input: git option injection", tried=1, refused=1)


@pytest.mark.parametrize("remote", ["ext::sh -c touch% {s}", "fd::0",
                                    "ssh://-oProxyCommand=touch%20{s}/r"])
def test_git_itself_refuses_command_transports_when_the_check_is_bypassed(
    remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with the builder's check switched off, git's own settings refuse."""
    from parsl_poncho.build import data

    sentinel = tmp_path / "sentinel"
    monkeypatch.setattr(data, "check_git_source", lambda *a, **k: None)
    with pytest.raises(BuildError, match=r"git clone"):
        data.clone_git("DATA", remote.format(s=sentinel), None, tmp_path / "dest", 60)
    assert not sentinel.exists()


# -- http data: sha256 mismatches and hostile archives --------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_http_sha256_mismatch_fails_the_build_and_caches_nothing(
    tmp_path: Path, http_root: tuple[Path, str], real_options: Any
) -> None:
    root, base = http_root
    (root / "db.csv").write_bytes(b"a,b\n1,2\n")
    good = sha256_file(root / "db.csv")
    bad = good[::-1]
    with EnvStore(tmp_path / "cache", build_options=real_options) as store:
        spec = Spec(conda=(f"python={PYTHON}",), http={"DB": HttpData(f"{base}/db.csv",
                                                                      sha256=bad)})
        with pytest.raises(BuildError, match=r"http\.DB: sha256 mismatch .*expected " + bad):
            store.get(spec).result(timeout=600)
        assert store.entries() == []
        assert list((tmp_path / "cache" / "staging").iterdir()) == []
        # the right digest builds, and the data is in the env
        env = store.get(Spec(conda=(f"python={PYTHON}",),
                             http={"DB": HttpData(f"{base}/db.csv", sha256=good)})
                        ).result(timeout=600)
    with tarfile.open(env.tarball) as tar:
        member = tar.extractfile("share/parsl-poncho/data/DB")
        assert member is not None and member.read() == b"a,b\n1,2\n"
    record("bad input: http sha256 mismatch", tried=1, refused=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_http_tar_data_with_traversal_is_refused(
    tmp_path: Path, http_root: tuple[Path, str], real_options: Any
) -> None:
    root, base = http_root
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../../../http-pwned.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"pwned"))
    (root / "data.tar.gz").write_bytes(buf.getvalue())
    spec = Spec(conda=(f"python={PYTHON}",),
                http={"D": HttpData(f"{base}/data.tar.gz", type="tar")})
    with EnvStore(tmp_path / "cache", build_options=real_options) as store:
        with pytest.raises(BuildError, match=r"http\.D: cannot unpack"):
            store.get(spec).result(timeout=600)
        assert store.entries() == []
    assert not any(p.name == "http-pwned.txt" for p in Path(tmp_path).rglob("*"))
    assert not Path("/tmp/http-pwned.txt").exists()
    record("bad input: hostile http tar data", tried=1, refused=1)


# -- unpicklable functions and arguments ----------------------------------------------------------
def test_unpicklable_argument_is_named_at_submission() -> None:
    import threading

    from parsl_poncho.errors import TaskSerializationError
    from parsl_poncho.tasks import serialize_call

    def task(x: Any, *, flag: Any = None) -> Any:
        return x

    lock = threading.Lock()
    with pytest.raises(TaskSerializationError, match=r"positional argument 1 \(lock") as info:
        serialize_call(task, (1, lock), {})
    assert "cannot be pickled" in str(info.value)
    with pytest.raises(TaskSerializationError, match=r"keyword argument 'flag'"):
        serialize_call(task, (1,), {"flag": (x for x in range(3))})
    gen_fn = lambda: lock  # noqa: E731 - a closure over an unpicklable object
    with pytest.raises(TaskSerializationError, match=r"function '<lambda>'"):
        serialize_call(gen_fn, (), {})
    record("bad input: unpicklable calls", tried=3, refused=3)



# -- Work Queue's password file ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_only_workers_with_the_password_run_tasks(tmp_path: Path, seeded_channel: Path,
                                                  shared_pkg_cache: Path, workers: Any) -> None:
    import time

    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from parsl_poncho.build import BuildOptions
    from parsl_poncho.executor import PonchoExecutor

    password = tmp_path / "wq.password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("Tr0ub4dor&3\n")

    @parsl.python_app
    def double(x: int) -> int:
        return 2 * x

    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=shared_pkg_cache)
    executor = PonchoExecutor(store=EnvStore(tmp_path / "cache", build_options=options),
                              project_password_file=str(password),
                              provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0))
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy="none")
    with parsl.load(config):
        port = executor._manager.port
        assert executor.worker_command.startswith(f"work_queue_worker --password {password}")
        future = double(21)
        workers.start(port, 1)
        workers.start(port, 1, "--password", str(wrong))
        deadline = time.monotonic() + 600
        while not executor._manager.sent:  # built and verified: the task is in Work Queue's queue
            assert time.monotonic() < deadline, "the task was never sent to Work Queue"
            time.sleep(0.2)
        time.sleep(8)  # time for a worker with the wrong password to take the task
        assert not future.done(), "a worker without the right password ran a task"
        workers.start(port, 1, "--password", str(password))
        assert future.result(timeout=600) == 42
    log = next((tmp_path / "runinfo").rglob("transaction_log")).read_text().splitlines()
    events = [line.split(maxsplit=2)[2] for line in log
              if not line.startswith("#") and len(line.split(maxsplit=2)) == 3]
    connected = [e for e in events if e.endswith("CONNECTION") and "DISCONNECTION" not in e]
    assert len(connected) == 1, f"workers without the password connected: {connected}"
    assert events.index(next(e for e in events if "WAITING" in e)) < events.index(connected[0])
    record("security: Work Queue password", workers_refused=2, workers_accepted=1)
