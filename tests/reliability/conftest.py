"""Fixtures of the reliability suite: closed ports, small tmpfs mounts, a local HTTP server,
crafted tarballs, real build options, and the counters printed at the end of a run."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import tarfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from tools import require, require_tool

from parsl_poncho.build._util import sha256_file

#: Counters every test may bump (``report["faults injected"] += 1``); printed after the run.
REPORT: dict[str, dict[str, Any]] = defaultdict(dict)


def record(section: str, **values: Any) -> None:
    """Add ``values`` to ``section`` of the run's report (numbers add up, the rest replaces)."""
    entry = REPORT[section]
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in entry:
            entry[key] += value
        else:
            entry[key] = value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the reliability counters (faults injected/survived, inputs tried/refused, load)."""
    if not REPORT:
        return
    terminalreporter.section("parsl-poncho reliability report")
    for section in sorted(REPORT):
        items = ", ".join(f"{k}={_fmt(v)}" for k, v in REPORT[section].items())
        terminalreporter.write_line(f"{section}: {items}")


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# -- network --------------------------------------------------------------------------------------
@pytest.fixture()
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening, so nobody takes it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- disks ----------------------------------------------------------------------------------------
@dataclass
class Tmpfs:
    """A mounted tmpfs of a fixed size; ``resize`` remounts it with another size."""

    path: Path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def used_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Tmpfs]]:
    """Factory: ``tmpfs("name", "8m")`` mounts a tmpfs of that size (unmounted at teardown).

    Skips when not root or when mount(8) refuses (no CAP_SYS_ADMIN in a container).
    """
    mounted: list[Path] = []

    def make(name: str, size: str) -> Tmpfs:
        require(os.geteuid() == 0, "mounting a small tmpfs (disk full) needs root")
        require_tool("mount")
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True, text=True,
        )
        require(proc.returncode == 0,
                f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {proc.stderr.strip()}")
        mounted.append(path)
        return Tmpfs(path)

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- crafted tarballs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One crafted archive member: "file", "dir", "symlink", "hardlink", "fifo" or "chardev"."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644


#: A minimal relocatable "environment": enough for poncho_run (no Python needed).
FAKE_ENV_MEMBERS = (
    Member("bin", "dir", mode=0o755),
    Member("bin/python", data=b'#!/bin/sh\nexec /bin/sh "$@"\n', mode=0o755),
    Member("bin/conda-unpack", data=b"exit 0\n", mode=0o755),
    Member("share/data/hello.txt", data=b"hello\n"),
)


def write_tarball(path: Path, members: tuple[Member, ...] | list[Member]) -> Path:
    """Write ``members`` into a tar.gz at ``path`` with names exactly as given (unsafe too)."""
    buf = io.BytesIO()
    kinds = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "file": tarfile.REGTYPE}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = kinds[m.kind]
            info.mode = m.mode
            info.mtime = 1_700_000_000
            info.linkname = m.target
            if m.kind == "chardev":
                info.devmajor, info.devminor = 1, 3
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    import gzip

    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    return path


@pytest.fixture()
def fake_env_tarball(tmp_path: Path) -> Path:
    """A small valid env tarball named like the store names them."""
    return write_tarball(tmp_path / ("env-" + "a" * 64 + ".tar.gz"), FAKE_ENV_MEMBERS)


# -- the shim -------------------------------------------------------------------------------------
def run_shim(*args: str | Path, cache: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120, path: str | None = None,
             shell: str = "/bin/sh") -> subprocess.CompletedProcess[str]:
    """Run worker_shim/poncho_run with ``args`` (worker cache ``cache``); never raises on status."""
    from parsl_poncho.shim import poncho_run_path

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PARSL_PONCHO_")}
    if cache is not None:
        environ["PARSL_PONCHO_WORKER_CACHE"] = str(cache)
    if path is not None:
        environ["PATH"] = path
    environ.update(env or {})
    return subprocess.run([shell, str(poncho_run_path()), *map(str, args)], env=environ,
                          capture_output=True, text=True, timeout=timeout)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """{relative path: (mode, size, mtime_ns)} of everything under ``root`` (links not followed)."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


# -- real builds ----------------------------------------------------------------------------------
PYTHON = ".".join(str(v) for v in __import__("sys").version_info[:3])


@pytest.fixture()
def real_options(seeded_channel: Path, tmp_path: Path) -> Any:
    """BuildOptions for offline builds from the seeded channel, with a private package cache
    (a kill or a full disk here never touches the shared test caches) and scratch in staging."""
    from parsl_poncho.build import BuildOptions

    return BuildOptions(channels=(str(seeded_channel),), cache_dir=tmp_path / "pkg-cache",
                        workdir=None, timeout=300)


def check_entry(entry_dir: Path) -> str:
    """Assert a published store entry is complete and intact; return its hash.

    entry.json, manifest.json and the tarball exist; the tarball's sha256 and size match both
    records; the gzip stream and every tar header read to the end.
    """
    import json

    env_hash = entry_dir.name
    record_ = json.loads((entry_dir / "entry.json").read_text())
    manifest = json.loads((entry_dir / "manifest.json").read_text())
    tarball = entry_dir / record_["tarball"]
    assert tarball.name == f"env-{env_hash}.tar.gz"
    digest = sha256_file(tarball)
    assert digest == record_["sha256"], f"{tarball}: sha256 differs from entry.json"
    if manifest.get("sha256"):
        assert digest == manifest["sha256"], f"{tarball}: sha256 differs from manifest.json"
    assert tarball.stat().st_size == record_["size"]
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert names, f"{tarball} has no members"
    return env_hash


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- the workflow script (submit process) and Work Queue workers ---------------------------------
WORKFLOW = Path(__file__).parent / "workflow" / "script.py"


@pytest.fixture(scope="session")
def shared_pkg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rattler/uv package cache shared by the workflow runs of one session."""
    return tmp_path_factory.mktemp("workflow-pkg-cache")


@dataclass
class Workflow:
    """A running workflow script: its process (own session) and the lines it printed."""

    proc: subprocess.Popen[str]
    lines: list[str]
    cond: threading.Condition

    def wait_line(self, prefix: str, count: int = 1, timeout: float = 600) -> list[str]:
        """The first ``count`` lines starting with ``prefix`` (AssertionError on timeout/exit)."""
        import time

        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [line for line in self.lines if line.startswith(prefix)]
                if len(found) >= count:
                    return found[:count]
                assert "EOF" not in self.lines, f"workflow ended early: {self.lines[-15:]}"
                left = deadline - time.monotonic()
                assert left > 0, f"no {count} x {prefix!r} lines: {self.lines[-15:]}"
                self.cond.wait(left)

    def port(self) -> int:
        return int(self.wait_line("PORT ")[0].split()[1])

    def summary(self, timeout: float = 1800) -> dict[str, Any]:
        import json

        line = self.wait_line("SUMMARY ", timeout=timeout)[0]
        self.proc.wait(timeout=120)
        return json.loads(line[len("SUMMARY "):])

    def builds(self) -> list[str]:
        with self.cond:
            return [line.split()[1] for line in self.lines if line.startswith("BUILD ")]

    def kill(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


def start_workflow(tmp: Path, channel: Path, pkg_cache: Path, *, cache: Path, run_dir: Path,
                   tasks: int, workers: int = 0, extra: tuple[str, ...] = (),
                   worker_cache: Path | None = None) -> Workflow:
    """Start the workflow script (stdout read in a thread; stderr to ``run_dir``.stderr)."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSL_PONCHO_")}
    env["PARSL_PONCHO_WORKER_CACHE"] = str(worker_cache or tmp / "worker-cache")
    stderr = open(f"{run_dir}.stderr", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, str(WORKFLOW), "--cache", str(cache), "--channel", str(channel),
         "--pkg-cache", str(pkg_cache), "--run-dir", str(run_dir), "--tasks", str(tasks),
         "--workers", str(workers), *extra],
        cwd=WORKFLOW.parent, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        start_new_session=True,
    )
    stderr.close()
    flow = Workflow(proc, [], threading.Condition())

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with flow.cond:
                flow.lines.append(line.rstrip("\n"))
                flow.cond.notify_all()
        with flow.cond:
            flow.lines.append("EOF")
            flow.cond.notify_all()

    threading.Thread(target=read, daemon=True).start()
    return flow


class Workers:
    """work_queue_worker processes started by a test, each in its own session; all killed at
    teardown (with any task processes they left)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, port: int, cores: int = 1, *extra: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARSL_PONCHO_")}
        env["PARSL_PONCHO_WORKER_CACHE"] = str(self.cache)
        proc = subprocess.Popen(
            ["work_queue_worker", "--cores", str(cores), "--timeout", "120", *extra,
             "localhost", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        import signal

        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[Workers]:
    require_tool("work_queue_worker")
    pool = Workers(tmp_path / "worker-cache")
    yield pool
    pool.close()


def external_worker_executor(tmp_path: Path, channel: Path, pkg_cache: Path, **kwargs: Any) -> Any:
    """(PonchoExecutor with no provider blocks: the test starts workers, Parsl Config)."""
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from parsl_poncho.build import BuildOptions
    from parsl_poncho.executor import PonchoExecutor
    from parsl_poncho.store import EnvStore

    options = BuildOptions(channels=(str(channel),), cache_dir=pkg_cache)
    executor = PonchoExecutor(store=EnvStore(tmp_path / "cache", build_options=options),
                              provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
                              **kwargs)
    config = Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), strategy="none")
    return executor, config
