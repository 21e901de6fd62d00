"""poncho_run on small handcrafted env tarballs: activation, one unpack per node under
concurrency, kills, corrupt and unsafe archives, locks, eviction; shim.py and the CLI."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from shim_helpers import (
    SHELL,
    FakeEnv,
    Member,
    ShimRunner,
    make_env_tarball,
    write_tarball,
)
from tools import require_tool

from parsl_poncho.cli import run as cli_run
from parsl_poncho.shim import poncho_run_path, run_function_path

REPO = Path(__file__).resolve().parent.parent


def _lock_host() -> str:
    """How poncho_run names this host in lock owners: hostname/pidns-<PID namespace inode>."""
    try:
        ns = os.readlink(f"/proc/{os.getpid()}/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return os.uname().nodename
    return f"{os.uname().nodename}/pidns-{ns[len('pid:['):-1]}"


HOST = _lock_host()

EXIT_USAGE, EXIT_CORRUPT, EXIT_UNSAFE, EXIT_UNPACK, EXIT_LOCK = 64, 65, 66, 67, 68

SHOW_ENV = (
    'echo "PATH0=${PATH%%:*}"; echo "PREFIX=$CONDA_PREFIX"; echo "DATA=$DATA_DIR"; '
    'echo "NOUSER=$PYTHONNOUSERSITE"; echo "PYPATH=${PYTHONPATH-unset}"; '
    'echo "PYHOME=${PYTHONHOME-unset}"; cat "$CONDA_PREFIX/prefix.txt"'
)


@pytest.fixture()
def shim(tmp_path: Path) -> ShimRunner:
    return ShimRunner(tmp_path)


@pytest.fixture()
def tarball(tmp_path: Path) -> Path:
    return make_env_tarball(tmp_path / "env-fake.tar.gz")


def parse(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# -- running and activation -------------------------------------------------------------------


def test_activates_env_and_runs_command(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("-e", tarball, "--", "sh", "-c", SHOW_ENV,
                      PYTHONPATH="/host/site", PYTHONHOME="/host")
    assert result.returncode == 0, result.stderr
    env_dir = shim.cache / "env-fake"
    seen = parse(result.stdout)
    assert seen["PATH0"] == f"{env_dir}/bin"
    assert seen["PREFIX"] == str(env_dir)
    assert seen["DATA"] == f"{env_dir}/share/data"
    assert seen["NOUSER"] == "1"
    assert seen["PYPATH"] == "unset" and seen["PYHOME"] == "unset"
    # conda-unpack ran at the final location, so relocated paths point there
    assert result.stdout.splitlines()[-1] == str(env_dir)
    assert (env_dir / ".poncho-ready").is_file()
    assert oct(shim.cache.stat().st_mode & 0o777) == "0o700"


def test_execs_command_so_status_and_pid_are_the_tasks(shim: ShimRunner, tarball: Path) -> None:
    proc = shim.popen("-e", tarball, "sh", "-c", "echo $$; exit 7")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert int(out.strip()) == proc.pid


def test_second_task_reuses_the_unpack(shim: ShimRunner, tarball: Path) -> None:
    for _ in range(3):
        result = shim.run("-e", tarball, "true")
        assert result.returncode == 0, result.stderr
    assert shim.unpack_count() == 1


def test_sixteen_concurrent_tasks_unpack_once(shim: ShimRunner, tarball: Path) -> None:
    procs = [shim.popen("-e", tarball, "sh", "-c", "cat $CONDA_PREFIX/prefix.txt", FAKE_SLEEP="1")
             for _ in range(16)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(shim.cache / "env-fake")}
    assert shim.unpack_count() == 1
    assert shim.leftovers() == []


def test_no_command_prepares_only(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("-e", tarball)
    assert result.returncode == 0, result.stderr
    assert (shim.cache / "env-fake" / ".poncho-ready").is_file()
    assert shim.run("-n", "-e", tarball, "false").returncode == 0


def test_unpack_to_directory(shim: ShimRunner, tarball: Path, tmp_path: Path) -> None:
    target = tmp_path / "here" / "myenv"
    result = shim.run("-u", target, "-e", tarball, "sh", "-c", SHOW_ENV)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["PREFIX"] == str(target)
    assert shim.run("-u", target, "-e", tarball, "true").returncode == 0
    assert shim.unpack_count() == 1


def test_unpack_to_foreign_directory_is_refused(
    shim: ShimRunner, tarball: Path, tmp_path: Path
) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    result = shim.run("-u", target, "-e", tarball, "true")
    assert result.returncode == EXIT_USAGE
    assert "not a poncho_run environment" in result.stderr
    assert (target / "thesis.tex").read_text() == "do not delete"


def test_environment_directory_is_used_as_is(shim: ShimRunner, tmp_path: Path) -> None:
    env_dir = tmp_path / "plain-env"
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "prefix.txt").write_text("as is\n")
    result = shim.run("-e", env_dir, "sh", "-c", SHOW_ENV)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["PREFIX"] == str(env_dir)
    assert shim.unpack_count() == 0


def test_command_not_found_is_127(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("-e", tarball, "no-such-command-xyz")
    assert result.returncode == 127


# -- kills, failures, leftovers ---------------------------------------------------------------


def test_sigkill_during_unpack_then_next_task_succeeds(
    shim: ShimRunner, tarball: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    proc = shim.popen("-e", tarball, "true", FAKE_SLEEP="60", FAKE_STARTED=str(started))
    wait_for(started.exists)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    env_dir = shim.cache / "env-fake"
    assert not (env_dir / ".poncho-ready").exists()
    assert (shim.cache / "env-fake.lock").is_dir()  # the dead task's lock is still there

    result = shim.run("-e", tarball, "sh", "-c", "cat $CONDA_PREFIX/prefix.txt")
    assert result.returncode == 0, result.stderr
    assert "breaking stale lock" in result.stderr
    assert result.stdout.strip() == str(env_dir)
    assert shim.unpack_count() == 2
    assert shim.leftovers() == []


def test_waiters_take_over_when_the_unpacker_is_killed(
    shim: ShimRunner, tarball: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    unpacker = shim.popen("-e", tarball, "true", FAKE_SLEEP="60", FAKE_STARTED=str(started))
    wait_for(started.exists)
    started.unlink()
    waiters = [shim.popen("-w", "60", "-e", tarball, "sh", "-c", "cat $CONDA_PREFIX/prefix.txt",
                          FAKE_SLEEP="1")
               for _ in range(8)]
    time.sleep(0.5)
    os.killpg(unpacker.pid, signal.SIGKILL)
    unpacker.wait(timeout=30)
    outputs = [w.communicate(timeout=120) for w in waiters]
    assert [w.returncode for w in waiters] == [0] * 8, [err for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(shim.cache / "env-fake")}
    assert shim.unpack_count() == 2  # the killed one and exactly one redo
    assert sum("breaking stale lock" in err for _, err in outputs) == 1
    assert shim.leftovers() == []


def test_sigterm_during_unpack_cleans_up(shim: ShimRunner, tarball: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = shim.popen("-e", tarball, "true", FAKE_SLEEP="60", FAKE_STARTED=str(started))
    wait_for(started.exists)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 143
    assert shim.leftovers() == []
    assert not (shim.cache / "env-fake").exists()


def test_conda_unpack_failure_is_reported_and_retried(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("-e", tarball, "true", FAKE_FAIL="1")
    assert result.returncode == EXIT_UNPACK
    assert "poncho_run: error: conda-unpack failed" in result.stderr
    assert "relocation went wrong" in result.stderr
    assert not (shim.cache / "env-fake").exists()
    assert shim.leftovers() == []
    assert shim.run("-e", tarball, "true").returncode == 0


def test_incomplete_unpack_left_behind_is_redone(shim: ShimRunner, tarball: Path) -> None:
    half = shim.cache / "env-fake"
    (half / "bin").mkdir(parents=True)
    (half / ".poncho-unpacking").write_text("12345 elsewhere\n")
    (shim.cache / "env-fake.partial.999999").mkdir()
    result = shim.run("-e", tarball, "sh", "-c", "cat $CONDA_PREFIX/prefix.txt")
    assert result.returncode == 0, result.stderr
    assert shim.unpack_count() == 1
    assert shim.leftovers() == []


# -- locks -----------------------------------------------------------------------------------


def write_lock(lock: Path, pid: int, host: str) -> None:
    lock.mkdir(parents=True)
    (lock / "owner").write_text(f"{pid} {host}\n")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_dead_process_is_broken(shim: ShimRunner, tarball: Path) -> None:
    write_lock(shim.cache / "env-fake.lock", dead_pid(), HOST)
    result = shim.run("-w", "30", "-e", tarball, "true")
    assert result.returncode == 0, result.stderr
    assert "breaking stale lock" in result.stderr


def test_lock_of_live_process_times_out(shim: ShimRunner, tarball: Path) -> None:
    write_lock(shim.cache / "env-fake.lock", os.getpid(), HOST)
    started = time.monotonic()
    result = shim.run("-w", "1", "-e", tarball, "true")
    assert result.returncode == EXIT_LOCK
    assert "timed out after 1s waiting for the lock" in result.stderr
    assert f"pid {os.getpid()} on host {HOST}" in result.stderr
    assert time.monotonic() - started < 15
    assert (shim.cache / "env-fake.lock").is_dir()  # not ours to remove


def test_lock_from_another_pid_namespace_is_not_broken(shim: ShimRunner, tarball: Path) -> None:
    write_lock(shim.cache / "env-fake.lock", dead_pid(), f"{os.uname().nodename}/pidns-1")
    result = shim.run("-w", "1", "-e", tarball, "true")
    assert result.returncode == EXIT_LOCK


def test_lock_from_another_host_is_not_broken(shim: ShimRunner, tarball: Path) -> None:
    write_lock(shim.cache / "env-fake.lock", dead_pid(), "some-other-node")
    result = shim.run("-w", "1", "-e", tarball, "true")
    assert result.returncode == EXIT_LOCK


def test_waiter_uses_env_finished_by_lock_holder(shim: ShimRunner, tarball: Path) -> None:
    first = shim.popen("-e", tarball, "true", FAKE_SLEEP="2")
    wait_for(lambda: (shim.cache / "env-fake.lock").exists())
    second = shim.run("-w", "60", "-e", tarball, "true")
    assert first.wait(timeout=60) == 0
    assert second.returncode == 0, second.stderr
    assert shim.unpack_count() == 1


# -- corrupt and mismatched tarballs ----------------------------------------------------------


def test_truncated_tarball_is_detected(shim: ShimRunner, tmp_path: Path) -> None:
    tarball = make_env_tarball(tmp_path / "env-fake.tar.gz", FakeEnv(filler_bytes=200_000))
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    result = shim.run("-e", tarball, "true")
    assert result.returncode == EXIT_CORRUPT
    assert "is truncated or corrupt" in result.stderr
    assert "re-send or rebuild it" in result.stderr
    assert not (shim.cache / "env-fake").exists()
    assert shim.leftovers() == []


def test_corrupted_bytes_are_detected(shim: ShimRunner, tmp_path: Path) -> None:
    tarball = make_env_tarball(tmp_path / "env-fake.tar.gz", FakeEnv(filler_bytes=200_000))
    data = bytearray(tarball.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    tarball.write_bytes(bytes(data))
    result = shim.run("-e", tarball, "true")
    assert result.returncode == EXIT_CORRUPT
    assert "is truncated or corrupt" in result.stderr


def test_not_a_tarball(shim: ShimRunner, tmp_path: Path) -> None:
    bogus = tmp_path / "env-bogus.tar.gz"
    bogus.write_text("<html>404 not found</html>")
    result = shim.run("-e", bogus, "true")
    assert result.returncode == EXIT_CORRUPT
    assert "env-bogus.tar.gz is truncated or corrupt" in result.stderr


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_option_checks_and_keys_the_unpack(shim: ShimRunner, tarball: Path) -> None:
    digest = sha256(tarball)
    result = shim.run("-s", digest.upper(), "-e", tarball, "sh", "-c", "echo $CONDA_PREFIX")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(shim.cache / f"env-fake-{digest[:16]}")


def test_sha256_mismatch(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("-s", "0" * 64, "-e", tarball, "true")
    assert result.returncode == EXIT_CORRUPT
    assert "sha256 mismatch (expected 000" in result.stderr
    assert shim.unpack_count() == 0


def test_sha256_sidecar_is_honoured(shim: ShimRunner, tarball: Path) -> None:
    sidecar = tarball.with_name(tarball.name + ".sha256")
    sidecar.write_text(f"{'f' * 64}  {tarball.name}\n")
    result = shim.run("-e", tarball, "true")
    assert result.returncode == EXIT_CORRUPT
    assert "sha256 mismatch" in result.stderr
    sidecar.write_text(f"{sha256(tarball)}  {tarball.name}\n")
    assert shim.run("-e", tarball, "true").returncode == 0


# -- unsafe archives --------------------------------------------------------------------------


def unsafe_cases(outside: Path) -> dict[str, list[Member]]:
    return {
        "dotdot": [Member("../escaped.txt", b"x")],
        "dotdot-inside": [Member("bin/../../escaped.txt", b"x")],
        "absolute": [Member(str(outside / "escaped.txt"), b"x")],
        "symlink-absolute": [Member("lib/evil", kind="symlink", target=str(outside))],
        "symlink-climbs": [Member("lib/evil", kind="symlink", target="../../escaped")],
        "symlink-then-file": [
            Member("evil", kind="symlink", target="lib"),
            Member("evil/escaped.txt", b"x"),
        ],
        "symlink-chain": [
            Member("here", kind="symlink", target="."),
            Member("up", kind="symlink", target="here/.."),
        ],
        "hardlink-absolute": [Member("bin/evil", kind="hardlink", target="/etc/passwd")],
        "hardlink-dotdot": [Member("bin/evil", kind="hardlink", target="../escaped.txt")],
        "device": [Member("dev-null", kind="chardev")],
    }


@pytest.mark.parametrize("case", sorted(unsafe_cases(Path("/x"))))
def test_unsafe_archive_is_refused(shim: ShimRunner, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members = FakeEnv().members() + unsafe_cases(outside)[case]
    tarball = write_tarball(tmp_path / "env-evil.tar.gz", members)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = shim.run("-e", tarball, "touch", str(outside / "ran"))
    assert result.returncode == EXIT_UNSAFE, result.stderr
    assert "unsafe archive" in result.stderr and "refusing to unpack" in result.stderr
    after = sorted(str(p) for p in tmp_path.rglob("*") if p != shim.cache)
    assert [p for p in after if p not in before] == []
    assert list(shim.cache.iterdir()) == []
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_safe_relative_links_are_accepted(shim: ShimRunner, tmp_path: Path) -> None:
    extra = [
        Member("lib/deep/dir/link", kind="symlink", target="../../../bin/python"),
        Member("lib/hard", kind="hardlink", target="share/data/hello.txt"),
        Member("./share/dot/./file.txt", b"ok"),
    ]
    tarball = make_env_tarball(tmp_path / "env-links.tar.gz", FakeEnv(extra=extra))
    result = shim.run("-e", tarball, "sh", "-c", "cat $CONDA_PREFIX/lib/hard")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"


# -- data.env ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, why",
    [
        ("1BAD=share/data", "not a valid variable name"),
        ("BAD-NAME=share/data", "not a valid variable name"),
        ("PATH=bin", "reserved"),
        ("ESCAPE=../../etc", "must be a path inside the environment"),
        ("ABS=/etc", "must be a path inside the environment"),
        ("NOEQUALS", "is not NAME=RELPATH"),
    ],
)
def test_invalid_data_env_is_refused(shim: ShimRunner, tmp_path: Path, line: str, why: str) -> None:
    tarball = make_env_tarball(tmp_path / "env-data.tar.gz", FakeEnv(data_env=f"{line}\n"))
    result = shim.run("-e", tarball, "true")
    assert result.returncode == EXIT_CORRUPT
    assert why in result.stderr


def test_data_env_comments_and_several_variables(shim: ShimRunner, tmp_path: Path) -> None:
    data_env = "# data\n\nREF_DB=share/parsl-poncho/data/REF_DB\r\nDATASET=share/data\n"
    tarball = make_env_tarball(tmp_path / "env-data.tar.gz", FakeEnv(data_env=data_env))
    result = shim.run("-e", tarball, "sh", "-c", 'echo "$REF_DB|$DATASET"')
    assert result.returncode == 0, result.stderr
    prefix = shim.cache / "env-data"
    assert result.stdout.strip() == f"{prefix}/share/parsl-poncho/data/REF_DB|{prefix}/share/data"


# -- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, why",
    [
        ((), "no environment given"),
        (("-e",), "needs a value"),
        (("-e", "missing.tar.gz", "true"), "does not exist"),
        (("-w", "soon", "-e", "x.tar.gz", "true"), "whole number of seconds"),
        (("-s", "abc", "-e", "x.tar.gz", "true"), "sha256 in hex"),
        (("--cache-max-size", "lots", "-e", "x.tar.gz", "true"), "cache size limit"),
        (("--frobnicate", "-e", "x.tar.gz", "true"), "unknown option '--frobnicate'"),
    ],
)
def test_usage_errors(shim: ShimRunner, args: tuple[str, ...], why: str) -> None:
    result = shim.run(*args)
    assert result.returncode == EXIT_USAGE
    assert why in result.stderr
    assert result.stderr.startswith("poncho_run: error:")


def test_help_documents_the_options(shim: ShimRunner) -> None:
    result = shim.run("--help")
    assert result.returncode == 0
    for option in ("--environment", "--unpack-to", "--wait-for-lock", "--sha256", "--debug"):
        assert option in result.stdout


def test_cctools_compatible_long_options(shim: ShimRunner, tarball: Path) -> None:
    result = shim.run("--environment", tarball, "--wait-for-lock", "5", "--debug",
                      "--keep-alive", "--", "true")
    assert result.returncode == 0, result.stderr
    assert "poncho_run: debug:" in result.stderr


def test_refuses_default_cache_owned_by_someone_else(tmp_path: Path, tarball: Path) -> None:
    runner = ShimRunner(tmp_path)
    tmpdir = tmp_path / "sharedtmp"
    tmpdir.mkdir()
    (tmpdir / f"parsl-poncho-{os.getuid()}").symlink_to(tmp_path)
    env = runner.environ(TMPDIR=str(tmpdir))
    env.pop("PARSL_PONCHO_WORKER_CACHE")
    result = subprocess.run(runner.argv("-e", tarball, "true"), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == EXIT_USAGE
    assert "is a symlink or belongs to another user" in result.stderr


def test_default_cache_under_a_work_queue_worker_outlives_the_task(
    tmp_path: Path, tarball: Path
) -> None:
    runner = ShimRunner(tmp_path)
    workspace = tmp_path / "scratch" / "worker-0-4242"
    task_tmp = workspace / "t.1" / "cctools-temp-t.1.abcdef"
    task_tmp.mkdir(parents=True)
    env = runner.environ(WORK_QUEUE_SANDBOX=str(workspace), TMPDIR=str(task_tmp))
    env.pop("PARSL_PONCHO_WORKER_CACHE")
    result = subprocess.run(runner.argv("-e", tarball, "sh", "-c", "echo $CONDA_PREFIX"),
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cache = tmp_path / "scratch" / f"parsl-poncho-{os.getuid()}"
    assert result.stdout.strip() == str(cache / "env-fake")
    assert oct(cache.stat().st_mode & 0o777) == "0o700"


# -- eviction ---------------------------------------------------------------------------------


def test_eviction_removes_least_recently_used_but_never_one_in_use(
    shim: ShimRunner, tmp_path: Path
) -> None:
    tarballs = {
        name: make_env_tarball(tmp_path / f"env-{name}.tar.gz", FakeEnv(filler_bytes=400_000))
        for name in ("a", "b", "c")
    }
    for name in ("a", "b"):
        assert shim.run("-e", tarballs[name], "true").returncode == 0
    # env-a is the least recently used, but a task still runs in it
    holder = shim.popen("-e", tarballs["a"], "sleep", "60")
    wait_for(lambda: holder.poll() is None and _sleep_started(holder))
    os.utime(shim.cache / "env-a" / ".poncho-used", (1_000_000, 1_000_000))
    os.utime(shim.cache / "env-b" / ".poncho-used", (2_000_000, 2_000_000))
    one_env_kib = int((shim.cache / "env-a" / ".poncho-size").read_text())
    try:
        result = shim.run("--cache-max-size", f"{2 * one_env_kib + 10}K", "-d",
                          "-e", tarballs["c"], "true")
        assert result.returncode == 0, result.stderr
        assert "evicted" in result.stderr
        assert (shim.cache / "env-a" / ".poncho-ready").is_file()
        assert not (shim.cache / "env-b").exists()
        assert (shim.cache / "env-c" / ".poncho-ready").is_file()
        assert holder.poll() is None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert shim.leftovers() == []


def _sleep_started(proc: subprocess.Popen[str]) -> bool:
    try:
        return Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep")
    except OSError:
        return False


def test_cache_over_limit_with_everything_in_use_warns(shim: ShimRunner, tmp_path: Path) -> None:
    a = make_env_tarball(tmp_path / "env-a.tar.gz", FakeEnv(filler_bytes=100_000))
    b = make_env_tarball(tmp_path / "env-b.tar.gz", FakeEnv(filler_bytes=100_000))
    holder = shim.popen("-e", a, "sleep", "60")
    wait_for(lambda: _sleep_started(holder))
    try:
        result = shim.run("--cache-max-size", "1K", "-e", b, "true")
        assert result.returncode == 0, result.stderr
        assert "over its limit" in result.stderr
        assert (shim.cache / "env-a" / ".poncho-ready").is_file()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


# -- the script itself, shim.py and the CLI ---------------------------------------------------


def test_script_is_posix_sh() -> None:
    script = REPO / "worker_shim" / "poncho_run"
    assert subprocess.run([SHELL, "-n", str(script)]).returncode == 0
    assert script.read_text().startswith("#!/bin/sh\n")
    text = script.read_text()
    awk_start = text.index("CHECK_MEMBERS_AWK='")
    awk_end = text.index("\n'\n", awk_start)
    shell_only = text[:awk_start] + text[awk_end:]
    code = [line for line in shell_only.splitlines() if not line.lstrip().startswith("#")]
    for pattern in (r"\[\[", r"^\s*function\s", r"^\s*local\s", r"^\s*source\s", r"\$RANDOM",
                    r"<<<", r"^\s*declare\s", r"\$\{[A-Za-z_]+//", r"kill -[0-9]", r"echo -[ne]"):
        assert not [line for line in code if re.search(pattern, line)], pattern


SHELL_SCRIPTS = sorted(p.name for p in (REPO / "worker_shim").iterdir()
                       if p.is_file() and p.read_bytes().startswith(b"#!/bin/sh"))


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_shellcheck_posix_sh_is_clean(name: str) -> None:
    # shellcheck -s sh flags what POSIX sh lacks (SC3xxx) and real bugs, warnings and up.
    shellcheck = require_tool("shellcheck")
    script = REPO / "worker_shim" / name
    result = subprocess.run([shellcheck, "-s", "sh", "-S", "warning", str(script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_header_documents_exit_codes() -> None:
    header = (REPO / "worker_shim" / "poncho_run").read_text().split("PONCHO_RUN_VERSION")[0]
    for code in ("64", "65", "66", "67", "68"):
        assert f"#   {code}  " in header


def test_shim_paths_point_at_the_worker_files() -> None:
    assert poncho_run_path().read_bytes() == (REPO / "worker_shim" / "poncho_run").read_bytes()
    assert run_function_path().read_bytes() == (
        REPO / "worker_shim" / "run_function.py"
    ).read_bytes()
    assert os.access(poncho_run_path(), os.X_OK)


def test_poncho_package_run_execs_the_shim(tmp_path: Path) -> None:
    calls: list[tuple[str, list[str]]] = []
    code = cli_run.main(["-e", "env.tar.gz", "--", "python", "-V"],
                        exec_=lambda path, args: calls.append((path, args)))
    assert code == 0
    ((path, args),) = calls
    assert path == args[0] and Path(path).name in ("sh", "dash", "bash")
    assert args[1:] == [str(poncho_run_path()), "-e", "env.tar.gz", "--", "python", "-V"]


def test_poncho_package_run_really_runs(tmp_path: Path, tarball: Path) -> None:
    env = dict(os.environ, PARSL_PONCHO_WORKER_CACHE=str(tmp_path / "cache"))
    code = (
        "import sys; from parsl_poncho.cli.run import main; "
        f"sys.exit(main(['-e', {str(tarball)!r}, 'sh', '-c', 'echo $CONDA_PREFIX']))"
    )
    import sys

    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "cache" / "env-fake")


def test_gzip_member_concatenation_is_not_mistaken_for_corruption(
    shim: ShimRunner, tmp_path: Path
) -> None:
    # a tarball compressed by pigz/multi-member gzip is still one valid stream
    tarball = make_env_tarball(tmp_path / "env-multi.tar.gz")
    raw = gzip.decompress(tarball.read_bytes())
    half = len(raw) // 2
    tarball.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert shim.run("-e", tarball, "true").returncode == 0


# -- a busybox-only node ----------------------------------------------------------------------

BUSYBOX_TOOLS = ("sh", "tar", "gzip", "awk", "sed", "tr", "mkdir", "rm", "mv", "cat", "tail",
                 "wc", "du", "find", "ls", "sleep", "date", "cut", "uname", "id", "chmod",
                 "sha256sum", "printf", "rmdir", "true", "dirname", "head", "env")


@pytest.fixture()
def busybox_bin(tmp_path: Path) -> Path:
    busybox = require_tool("busybox")
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir()
    for tool in BUSYBOX_TOOLS:
        (bindir / tool).symlink_to(busybox)
    return bindir


def run_busybox(shim: ShimRunner, bindir: Path, *args: str | Path) -> subprocess.CompletedProcess:
    env = shim.environ(PATH=str(bindir))
    argv = [str(bindir / "sh"), str(poncho_run_path()), *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_busybox_node_runs_checks_and_refuses(
    shim: ShimRunner, tarball: Path, busybox_bin: Path, tmp_path: Path
) -> None:
    result = run_busybox(shim, busybox_bin, "-e", tarball, "sh", "-c", SHOW_ENV)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["PREFIX"] == str(shim.cache / "env-fake")
    assert run_busybox(shim, busybox_bin, "-e", tarball, "true").returncode == 0
    assert shim.unpack_count() == 1

    outside = tmp_path / "outside"
    for case in ("symlink-climbs", "hardlink-absolute", "device", "symlink-then-file"):
        evil = write_tarball(tmp_path / f"env-{case}.tar.gz",
                             FakeEnv().members() + unsafe_cases(outside)[case])
        result = run_busybox(shim, busybox_bin, "-e", evil, "true")
        assert result.returncode == EXIT_UNSAFE, (case, result.stderr)

    data = tarball.read_bytes()
    truncated = tmp_path / "env-short.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    result = run_busybox(shim, busybox_bin, "-e", truncated, "true")
    assert result.returncode == EXIT_CORRUPT, result.stderr


def test_eviction_without_flock_spares_recently_used(
    shim: ShimRunner, busybox_bin: Path, tmp_path: Path
) -> None:
    # busybox-bin has no flock: in use = used within PARSL_PONCHO_WORKER_CACHE_GRACE seconds
    tarballs = {
        name: make_env_tarball(tmp_path / f"env-{name}.tar.gz", FakeEnv(filler_bytes=400_000))
        for name in ("a", "b", "c")
    }
    for name in ("a", "b"):
        assert run_busybox(shim, busybox_bin, "-e", tarballs[name], "true").returncode == 0
    two_hours_ago = time.time() - 7200
    os.utime(shim.cache / "env-b" / ".poncho-used", (two_hours_ago, two_hours_ago))
    one_env_kib = int((shim.cache / "env-a" / ".poncho-size").read_text())
    result = run_busybox(shim, busybox_bin, "--cache-max-size", f"{one_env_kib + 10}K",
                         "-e", tarballs["c"], "true")
    assert result.returncode == 0, result.stderr
    assert not (shim.cache / "env-b").exists()
    assert (shim.cache / "env-a" / ".poncho-ready").is_file()  # used a moment ago
    assert (shim.cache / "env-c" / ".poncho-ready").is_file()
    assert "over its limit" in result.stderr


def test_worker_without_tar_is_told_so(
    shim: ShimRunner, busybox_bin: Path, tarball: Path
) -> None:
    (busybox_bin / "tar").unlink()
    result = run_busybox(shim, busybox_bin, "-e", tarball, "true")
    assert result.returncode == EXIT_UNPACK
    assert "this worker node has no 'tar'" in result.stderr
    assert shim.leftovers() == []


def test_paths_with_spaces_and_odd_names(tmp_path: Path) -> None:
    odd = tmp_path / "my dir"
    odd.mkdir()
    runner = ShimRunner(odd)
    tarball = make_env_tarball(odd / "env with spaces & $x.tar.gz")
    result = runner.run("-d", "--cache-max-size", "1K", "-e", tarball.name, "sh", "-c",
                        'printf "%s\\n" "$CONDA_PREFIX" "$DATA_DIR"')
    assert result.returncode == 0, result.stderr
    prefix = odd / "cache" / "env_with_spaces____x"
    assert result.stdout.splitlines() == [str(prefix), f"{prefix}/share/data"]
