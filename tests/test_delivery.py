"""parsl_poncho.delivery, parsl_poncho.fileserver and worker_shim/poncho_fetch without Work Queue:
publishing, the server and its GET counts, and the node-side fetch (once per node cache,
checked by sha256, retried, never leaving a half-written file)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from parsl_poncho import SharedDir, Url
from parsl_poncho.delivery import (
    FetchDelivery,
    Publisher,
    check_env_delivery,
    delivery_for,
    stage_fetcher,
)
from parsl_poncho.errors import DeliveryError
from parsl_poncho.exec_modes import WorkerCommands
from parsl_poncho.fileserver import FileServer
from parsl_poncho.shim import shim_file
from parsl_poncho.workqueue import SHIM_EXIT_MEANINGS, FileToWq

FETCH = shim_file("poncho_fetch")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(cwd: Path, cache: Path, *gets: tuple[str, str, str], tries: int = 1,
           command: tuple[str, ...] = ("cat",), env: dict | None = None
           ) -> subprocess.CompletedProcess:
    args = ["sh", str(FETCH), "--cache-dir", str(cache), "-t", str(tries)]
    for get in gets:
        args += ["--get", *get]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*args, "--", *command, *(g[0] for g in gets)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120)


# -- options --------------------------------------------------------------------------------
def test_options_are_checked_with_the_fix_in_the_message(tmp_path: Path) -> None:
    assert check_env_delivery("manager") == "manager"
    assert SharedDir(str(tmp_path)).path == str(tmp_path)
    with pytest.raises(DeliveryError, match="use 'manager', SharedDir"):
        check_env_delivery("shared")
    with pytest.raises(DeliveryError, match="give base .* or serve=True"):
        Url()
    with pytest.raises(DeliveryError, match="not an http:// or https:// URL"):
        Url(base="ftp://host/x", publish_dir=str(tmp_path))
    with pytest.raises(DeliveryError, match="tries is a whole number"):
        SharedDir(str(tmp_path), tries=0)


# -- publishing -----------------------------------------------------------------------------
def test_publish_is_content_addressed_atomic_and_repairs_a_bad_copy(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    local = tmp_path / "env-abc.tar.gz"
    local.write_bytes(data)
    pub = Publisher(tmp_path / "pub")
    name = pub.publish(local, _sha(data))
    assert name == f"{_sha(data)}-env-abc.tar.gz"
    assert (tmp_path / "pub" / name).read_bytes() == data
    assert (tmp_path / "pub" / f"{name}.sha256").read_text().split()[0] == _sha(data)
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == [name, f"{name}.sha256"]
    (tmp_path / "pub" / name).write_bytes(data[:1000])  # truncated on the shared dir
    assert Publisher(tmp_path / "pub").publish(local, _sha(data)) == name  # a new run repairs it
    assert (tmp_path / "pub" / name).read_bytes() == data
    with pytest.raises(DeliveryError, match="does not match its recorded sha256"):
        Publisher(tmp_path / "pub2").publish(local, _sha(b"other"))
    assert list((tmp_path / "pub2").iterdir()) == []


# -- the server -----------------------------------------------------------------------------
def test_server_counts_gets_refuses_other_paths_and_restarts_on_its_port(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    server = FileServer(tmp_path, host="127.0.0.1")
    url = server.start()
    try:
        assert urllib.request.urlopen(f"{url}/f").read() == b"x" * 1000
        for bad in ("g", "..%2Ff", ".hidden"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"{url}/{bad}")
        port = server.port
        server.stop()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{url}/f", timeout=5)
        assert server.start() == url and server.port == port
        urllib.request.urlopen(f"{url}/f").read()
        assert server.gets == {"f": 2}
    finally:
        server.stop()


def test_server_rate_cap_holds_over_all_connections(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1_000_000)
    server = FileServer(tmp_path, host="127.0.0.1", rate=4_000_000)
    url = server.start()
    try:
        start = time.monotonic()
        threads = [threading.Thread(target=lambda: urllib.request.urlopen(f"{url}/f").read())
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - start >= 0.4  # 2 MB at 4 MB/s, whichever way it is split
    finally:
        server.stop()


# -- poncho_fetch on the node ---------------------------------------------------------------
def test_fetch_from_a_shared_dir_copies_once_and_links(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "env.tar.gz"
    shared.parent.mkdir()
    shared.write_bytes(b"environment")
    cache = tmp_path / "cache"
    get = ("env-1.tar.gz", _sha(b"environment"), str(shared))
    first = _fetch(tmp_path / "t1", cache, get)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "environment"
    stored = cache / "fetched" / get[1]
    assert stored.read_bytes() == b"environment"
    assert os.path.realpath(tmp_path / "t1" / "env-1.tar.gz") == str(stored)
    shared.unlink()  # a later task of the node never goes back to the shared dir
    second = _fetch(tmp_path / "t2", cache, get)
    assert second.returncode == 0 and second.stdout == "environment", second.stderr
    assert sorted(p.name for p in (cache / "fetched").iterdir()) == [get[1]]


def test_a_corrupt_file_is_refused_by_its_sha256_and_leaves_nothing(tmp_path: Path) -> None:
    shared = tmp_path / "env.tar.gz"
    shared.write_bytes(b"truncat")
    get = ("env-1.tar.gz", _sha(b"truncated file"), str(shared))
    proc = _fetch(tmp_path / "t", tmp_path / "cache", get, tries=2)
    assert proc.returncode == 76
    assert f"{shared}: its sha256 is {_sha(b'truncat')}, expected {get[1]}" in proc.stderr
    assert "publish it again" in proc.stderr and "gave up after 2 tries" in proc.stderr
    assert "does not match its sha256" in SHIM_EXIT_MEANINGS[76]
    assert list((tmp_path / "cache" / "fetched").iterdir()) == []
    shared.write_bytes(b"truncated file")  # once the file is good, the next task succeeds
    again = _fetch(tmp_path / "t", tmp_path / "cache", get)
    assert again.returncode == 0 and again.stdout == "truncated file", again.stderr


def test_a_missing_source_names_the_path_and_what_to_check(tmp_path: Path) -> None:
    get = ("env-1.tar.gz", _sha(b"x"), str(tmp_path / "nowhere" / "env.tar.gz"))
    proc = _fetch(tmp_path / "t", tmp_path / "cache", get)
    assert proc.returncode == 74 and "could not be fetched" in SHIM_EXIT_MEANINGS[74]
    assert str(tmp_path / "nowhere" / "env.tar.gz") in proc.stderr
    assert "mounted on this node at the same path" in proc.stderr


def test_fetch_over_http_once_per_node_cache_with_concurrent_tasks(tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "e").write_bytes(data)
    server = FileServer(tmp_path / "www", host="127.0.0.1", rate=10_000_000)
    url = server.start()
    try:
        get = ("env-1.tar.gz", _sha(data), f"{url}/e")
        procs = []
        for cache in ("a", "b"):
            for i in range(4):  # 4 workers on each of 2 nodes
                cwd = tmp_path / f"{cache}{i}"
                cwd.mkdir()
                procs.append(subprocess.Popen(
                    ["sh", str(FETCH), "--cache-dir", str(tmp_path / cache), "--get", *get,
                     "--", "sha256sum", "env-1.tar.gz"], cwd=cwd, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, outs
        assert all(o[0].startswith(_sha(data)) for o in outs)
        assert server.gets == {"e": 2}
    finally:
        server.stop()


def test_fetch_survives_the_server_going_away_mid_transfer(tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "e").write_bytes(data)
    server = FileServer(tmp_path / "www", host="127.0.0.1", rate=2_000_000)
    url = server.start()
    try:
        get = ("env-1.tar.gz", _sha(data), f"{url}/e")
        proc = subprocess.Popen(
            ["sh", str(FETCH), "--cache-dir", str(tmp_path / "c"), "-t", "5", "--get", *get,
             "--", "true"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not list((tmp_path / "c" / "fetched").glob("*.part.*")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        server.stop()  # killed mid-fetch: the partial file must never be used
        time.sleep(1.5)
        server.limit = None
        server.start()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "trying again" in err
        assert (tmp_path / "c" / "fetched" / _sha(data)).read_bytes() == data
        assert server.gets["e"] >= 2
    finally:
        server.stop()


def test_no_curl_or_wget_on_the_node_is_named(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "mkdir", "chmod", "uname", "ln", "rm", "mv", "cat", "sha256sum"):
        os.symlink(subprocess.check_output(["sh", "-c", f"command -v {tool}"], text=True).strip(),
                   bin_dir / tool)
    get = ("env-1.tar.gz", _sha(b"x"), "http://127.0.0.1:9/e")
    proc = _fetch(tmp_path / "t", tmp_path / "cache", get, env={"PATH": str(bin_dir)})
    assert proc.returncode == 69 and "curl nor wget" in SHIM_EXIT_MEANINGS[69]
    assert "neither curl nor wget, needed to fetch http://127.0.0.1:9/e" in proc.stderr


# -- the task command -----------------------------------------------------------------------
@dataclass
class _Code:
    name: str
    sha256: str
    tarball: Path


@dataclass
class _Env:
    base_name: str
    sha256: str
    tarball: Path
    code: _Code | None


def test_fetch_delivery_sends_no_env_file_and_fetches_before_poncho_run(tmp_path: Path) -> None:
    base, code = tmp_path / "env-b.tar.gz", tmp_path / "code-c.tar.gz"
    base.write_bytes(b"base")
    code.write_bytes(b"code")
    env = _Env("env-b.tar.gz", _sha(b"base"), base, _Code("code-c.tar.gz", _sha(b"code"), code))
    staged = {n: FileToWq(f"/s/{n}", n, cache=True) for n in
              ("poncho_run", "run_function.py", "poncho_serve", "function_server.py",
               "call_process.py", "huge_pages.py")}
    commands = WorkerCommands(staged, init_command="module load x")
    delivery = delivery_for(SharedDir(str(tmp_path / "shared")), commands, tmp_path / "stage",
                            tmp_path)
    assert isinstance(delivery, FetchDelivery)
    inputs = delivery.inputs("regular", env)
    assert [f.remote for f in inputs] == ["poncho_run", "run_function.py", "poncho_fetch"]
    command = delivery.command_for("regular", env)
    assert command.startswith("module load x; ./poncho_fetch --cache-dir ")
    shared = tmp_path / "shared"
    assert (f"--get env-b.tar.gz {_sha(b'base')} {shared}/{_sha(b'base')}-env-b.tar.gz "
            f"--get code-c.tar.gz {_sha(b'code')} {shared}/{_sha(b'code')}-code-c.tar.gz "
            "2>&1 && ./poncho_run -e env-b.tar.gz") in command
    assert command.count("module load") == 1
    assert stage_fetcher(tmp_path / "stage").local == delivery.fetcher.local
    manager = delivery_for("manager", commands, tmp_path / "stage", tmp_path)
    assert [f.remote for f in manager.inputs("regular", env)][-2:] == ["env-b.tar.gz",
                                                                         "code-c.tar.gz"]


def test_url_modes_name_the_published_file_by_url(tmp_path: Path) -> None:
    data = b"base"
    base = tmp_path / "env-b.tar.gz"
    base.write_bytes(data)
    env = _Env("env-b.tar.gz", _sha(data), base, None)
    commands = WorkerCommands({n: FileToWq(f"/s/{n}", n, cache=True)
                               for n in ("poncho_run", "run_function.py")})
    own = delivery_for(Url("http://web.example/poncho/", publish_dir=str(tmp_path / "www")),
                       commands, tmp_path / "stage", tmp_path)
    assert f"http://web.example/poncho/{_sha(data)}-env-b.tar.gz" in own.command_for(
        "regular", env)
    assert (tmp_path / "www" / f"{_sha(data)}-env-b.tar.gz").read_bytes() == data
    served = delivery_for(Url(base="http://127.0.0.1:0", serve=True), commands,
                          tmp_path / "stage", tmp_path / "run")
    try:
        url = f"{served.server.url}/{_sha(data)}-env-b.tar.gz"
        assert url in served.command_for("regular", env)
        assert urllib.request.urlopen(url).read() == data  # published under the run dir
        assert (tmp_path / "run" / "published" / f"{_sha(data)}-env-b.tar.gz").is_file()
    finally:
        served.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_every_worker_file_ships_in_the_package_as_a_link_to_worker_shim() -> None:
    # parsl_poncho/_shim/ holds symlinks to worker_shim/ (setuptools copies their targets into
    # the wheel): a worker file without one would be missing from an installed package.
    repo = Path(__file__).resolve().parents[1]
    for source in (repo / "worker_shim").iterdir():
        if source.is_file() and not source.name.endswith(".pyc"):
            link = repo / "parsl_poncho" / "_shim" / source.name
            assert link.is_symlink() and link.resolve() == source.resolve(), source.name
    assert os.access(shim_file("poncho_fetch"), os.X_OK)
