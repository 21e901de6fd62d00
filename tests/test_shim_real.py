"""poncho_run and run_function.py on a real environment tarball made by the builder: one unpack
among 16 concurrent tasks, SIGKILL mid-unpack, corrupt and unsafe archives, and a function run
with the submit host's Python and the project checkout hidden (unshare --mount + tmpfs)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from shim_helpers import SHELL, ShimRunner
from tools import require

from parsl_poncho.shim import poncho_run_path, run_function_path

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="session")
def real_env(seeded_channel: Path, build_cache_dir: Path, tmp_path_factory) -> Path:
    """env-shimtest.tar.gz: python + pip + this cloudpickle, built by build_env (once)."""
    from parsl_poncho.build import BuildOptions, build_env
    from parsl_poncho.spec import Spec

    out = tmp_path_factory.mktemp("real-env") / "env-shimtest.tar.gz"
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=(f"cloudpickle=={cloudpickle.__version__}",))
    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=build_cache_dir,
                           workdir=out.parent / "work")
    build_env(spec, out, options=options, progress=lambda _: None)
    return out


@pytest.fixture(scope="session")
def real_env_tar(real_env: Path) -> bytes:
    """The uncompressed tar stream of the real env (to craft variants from)."""
    return gzip.decompress(real_env.read_bytes())


@pytest.fixture()
def shim(tmp_path: Path) -> ShimRunner:
    return ShimRunner(tmp_path)


def by_value(source: str, name: str) -> Any:
    """A function defined as in a user's __main__ script, so cloudpickle ships its code."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<user-script>", "exec"), namespace)
    return namespace[name]


PROBE = '''
def probe(hidden):
    import os, sys
    import cloudpickle
    try:
        import parsl  # noqa: F401
        has_parsl = True
    except ImportError:
        has_parsl = False
    return {
        "prefix": sys.prefix,
        "executable": sys.executable,
        "cloudpickle": cloudpickle.__file__,
        "sys_path": list(sys.path),
        "hidden": {p: sorted(os.listdir(p)) for p in hidden if os.path.isdir(p)},
        "has_parsl": has_parsl,
        "conda_prefix": os.environ.get("CONDA_PREFIX"),
        "user_site": __import__("site").ENABLE_USER_SITE,
    }
'''


def stage_task(workdir: Path, tarball: Path, fn: Any, *args: Any) -> Path:
    """Lay out a task sandbox as Work Queue would: shim, runner, env tarball, fn.pkl."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(poncho_run_path(), workdir / "poncho_run")
    shutil.copy2(run_function_path(), workdir / "run_function.py")
    shutil.copy2(tarball, workdir / tarball.name)
    (workdir / "fn.pkl").write_bytes(cloudpickle.dumps((fn, args, {})))
    return workdir


def task_command(tarball_name: str) -> list[str]:
    return [SHELL, "./poncho_run", "-e", tarball_name, "--",
            "python", "./run_function.py", "fn.pkl", "result.pkl"]


def test_function_roundtrip_through_the_shim(shim: ShimRunner, real_env: Path,
                                              tmp_path: Path) -> None:
    task = stage_task(tmp_path / "task", real_env, by_value(PROBE, "probe"), [])
    proc = subprocess.run(task_command(real_env.name), cwd=task, env=shim.environ(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = cloudpickle.loads((task / "result.pkl").read_bytes())
    assert result["status"] == "ok"
    value = result["value"]
    prefix = str(shim.cache / "env-shimtest")
    assert value["prefix"] == value["conda_prefix"] == prefix
    assert value["cloudpickle"].startswith(prefix + "/")
    assert value["user_site"] is False
    assert value["has_parsl"] is False


def test_sixteen_concurrent_tasks_unpack_once(shim: ShimRunner, real_env: Path) -> None:
    procs = [shim.popen("-d", "-e", real_env, "python", "-c", "import cloudpickle")
             for _ in range(16)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [err for _, err in outputs]
    unpacks = [err for _, err in outputs if "] unpacked " in err]
    assert len(unpacks) == 1
    assert shim.leftovers() == []


def test_sigkill_during_unpack_then_success(shim: ShimRunner, real_env: Path) -> None:
    target = shim.cache / "env-shimtest"
    proc = shim.popen("-e", real_env, "true")
    deadline = time.monotonic() + 120
    while not list(shim.cache.glob("env-shimtest.partial.*")):
        assert proc.poll() is None, "the unpack finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (target / ".poncho-ready").exists()

    result = shim.run("-e", real_env, "python", "-c", "import sys; print(sys.prefix)",
                      timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(target)
    assert shim.leftovers() == []


def test_truncated_real_tarball(shim: ShimRunner, real_env: Path, tmp_path: Path) -> None:
    short = tmp_path / real_env.name
    data = real_env.read_bytes()
    short.write_bytes(data[: len(data) * 9 // 10])
    result = shim.run("-e", short, "python", "-c", "pass", timeout=300)
    assert result.returncode == 65
    assert "is truncated or corrupt" in result.stderr
    assert not (shim.cache / "env-shimtest").exists() and shim.leftovers() == []


@pytest.mark.parametrize(
    "name, kind, target",
    [
        ("../escaped.txt", tarfile.REGTYPE, ""),
        ("/tmp/parsl-poncho-escaped.txt", tarfile.REGTYPE, ""),
        ("lib/escape", tarfile.SYMTYPE, "../../.."),
    ],
)
def test_real_tarball_with_an_unsafe_member(shim: ShimRunner, real_env_tar: bytes,
                                            tmp_path: Path, name: str, kind: bytes,
                                            target: str) -> None:
    raw = tmp_path / "env-evil.tar"
    raw.write_bytes(real_env_tar)
    with tarfile.open(raw, "a", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info, io.BytesIO(b""))
    evil = tmp_path / "env-evil.tar.gz"
    evil.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=1))
    raw.unlink()
    result = shim.run("-e", evil, "python", "-c", "pass", timeout=300)
    assert result.returncode == 66, result.stderr
    assert "unsafe archive" in result.stderr
    assert list(shim.cache.iterdir()) == []
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not Path("/tmp/parsl-poncho-escaped.txt").exists()


def hidden_paths() -> list[str]:
    """The submit host's Python installation and the project checkout (with its venv)."""
    paths = {str(REPO)}
    base = Path(sys.base_prefix)
    if str(base) in ("/usr", "/usr/local", "/"):
        paths.update(str(p) for p in base.glob("lib/python3*"))
    elif "/.pyenv/" in str(base):
        paths.add(str(base).split("/.pyenv/")[0] + "/.pyenv")
    else:
        paths.add(str(base))
    paths.update(str(p) for p in Path("/usr/lib").glob("python3*"))
    paths.update(str(p) for p in Path("/usr/local/lib").glob("python3*"))
    return sorted(p for p in paths if os.path.isdir(p))


def unshare_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def test_function_runs_from_the_shipped_env_alone(real_env: Path, tmp_path: Path) -> None:
    require(unshare_works(), "needs root and unshare --mount (util-linux)")
    hidden = hidden_paths()
    task = stage_task(tmp_path / "task", real_env, by_value(PROBE, "probe"), hidden)
    mounts = "".join(f"mount -t tmpfs tmpfs '{p}' && " for p in hidden)
    shell = shutil.which("dash") or "/bin/sh"
    command = " ".join(f"'{a}'" for a in [shell, *task_command(real_env.name)[1:]])
    script = f"{mounts}cd '{task}' && exec {command}"
    env = dict(os.environ, PARSL_PONCHO_WORKER_CACHE=str(tmp_path / "node-cache"),
               PYTHONPATH=f"{REPO}:{sys.base_prefix}/lib/python{PYVER}", PYTHONHOME=sys.base_prefix)
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = cloudpickle.loads((task / "result.pkl").read_bytes())
    assert result["status"] == "ok", result.get("traceback")
    value = result["value"]
    prefix = str(tmp_path / "node-cache" / "env-shimtest")
    assert value["prefix"] == prefix
    assert value["executable"].startswith(prefix + "/bin/python")
    assert value["hidden"] == {p: [] for p in hidden}  # really hidden from the task
    assert value["has_parsl"] is False
    assert value["cloudpickle"].startswith(prefix + "/")
    outside = [p for p in value["sys_path"] if p and not p.startswith((prefix, str(task)))]
    assert outside == []


WQ_MANAGER = """
import json, subprocess, sys
sys.path.append("/usr/lib/python3/dist-packages")
import work_queue as wq

tarball, shim, workspace, counter, ntasks = sys.argv[1:6]
q = wq.WorkQueue(port=0)
worker = subprocess.Popen(["work_queue_worker", "--cores", "2", "-s", workspace, "-t", "60",
                           "localhost", str(q.port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for i in range(int(ntasks)):
        t = wq.Task("sh ./poncho_run -e env-fake.tar.gz -- sh -c 'echo $CONDA_PREFIX'")
        t.specify_input_file(shim, "poncho_run", cache=True)
        t.specify_input_file(tarball, "env-fake.tar.gz", cache=True)
        t.specify_environment_variable("FAKE_COUNTER", counter)
        t.specify_environment_variable("FAKE_SLEEP", "1")
        t.specify_cores(1)
        q.submit(t)
    results = []
    while not q.empty():
        t = q.wait(5)
        if t:
            results.append({"status": t.return_status, "output": t.output})
    print(json.dumps(results))
finally:
    worker.kill()
"""


def work_queue_available() -> bool:
    return bool(shutil.which("work_queue_worker")) and Path(
        "/usr/lib/python3/dist-packages/work_queue.py").exists()


def test_tasks_on_a_real_work_queue_worker_share_one_unpack(tmp_path: Path) -> None:
    require(work_queue_available(), "needs Debian's work_queue_worker and python3-workqueue "
            "(apt-get install coop-computing-tools python3-workqueue)")
    import json

    from shim_helpers import make_env_tarball

    tarball = make_env_tarball(tmp_path / "env-fake.tar.gz")
    workspace = tmp_path / "worker-space"
    workspace.mkdir()
    counter = tmp_path / "unpack-count"
    manager = tmp_path / "manager.py"
    manager.write_text(WQ_MANAGER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARSL_PONCHO_WORKER")}
    proc = subprocess.run([sys.executable, str(manager), str(tarball), str(poncho_run_path()),
                           str(workspace), str(counter), "4"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in results] == [0] * 4, results
    # The cache sits beside the worker's workspace, not in the per-task TMPDIR.
    prefixes = {r["output"].strip() for r in results}
    assert len(prefixes) == 1
    (prefix,) = prefixes
    assert Path(prefix).parent.parent == workspace
    assert Path(prefix).parent.name == f"parsl-poncho-{os.getuid()}"
    assert len(counter.read_text().split()) == 1


@pytest.mark.long
def test_sigkill_at_random_moments_never_leaves_a_broken_env(shim: ShimRunner,
                                                              real_env: Path) -> None:
    import random

    rng = random.Random(4)
    target = shim.cache / "env-shimtest"
    for _ in range(12):
        shutil.rmtree(shim.cache, ignore_errors=True)
        proc = shim.popen("-e", real_env, "true")
        time.sleep(rng.uniform(0.0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        result = shim.run("-e", real_env, "python", "-c", "import cloudpickle, sys; "
                          "print(sys.prefix)", timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(target)
        assert shim.leftovers() == []
