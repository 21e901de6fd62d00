"""Tests of parsl_poncho.exec_modes: per-task exec mode, task commands, staged worker files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from parsl_poncho.errors import ExecutorError
from parsl_poncho.exec_modes import (
    MAX_PRELOAD,
    WorkerCommands,
    exec_mode_for,
    preload_list,
    stage_worker_files,
    without_exec_mode,
)
from parsl_poncho.shim import SERVER_FILES, poncho_serve_path, shim_file


def app(x):
    return x


def test_exec_mode_defaults_and_per_app_override():
    assert exec_mode_for(app, {}, "regular") == "regular"
    assert exec_mode_for(app, {}, "serverless") == "serverless"
    assert exec_mode_for(app, {"exec_mode": "serverless"}, "regular") == "serverless"
    assert exec_mode_for(app, {"exec_mode": "regular"}, "serverless") == "regular"


def test_bash_apps_always_run_regular():
    from parsl.app.bash import remote_side_bash_executor

    assert exec_mode_for(remote_side_bash_executor, {"exec_mode": "serverless"},
                         "serverless") == "regular"


def test_unknown_exec_mode_names_the_key_and_the_choices():
    with pytest.raises(ExecutorError, match=r"\['exec_mode'\] is 'fork'; use one of 'regular', "
                                            r"'serverless'"):
        exec_mode_for(app, {"exec_mode": "fork"}, "regular")


def test_exec_mode_is_not_a_work_queue_resource():
    assert without_exec_mode({"cores": 2, "exec_mode": "serverless"}) == {"cores": 2}
    spec = {"cores": 1}
    assert without_exec_mode(spec) is spec


def test_preload_list_keeps_only_module_names():
    assert preload_list(["numpy", "sklearn.svm", "numpy", "x; rm -rf /", "a-b", "_ok"]) == (
        "_ok", "numpy", "sklearn.svm")
    assert len(preload_list([f"m{i}" for i in range(1000)])) == MAX_PRELOAD


def test_regular_and_serverless_commands(tmp_path: Path):
    commands = WorkerCommands(stage_worker_files(tmp_path), unpack_timeout=60,
                              worker_cache_dir="/scratch/c", init_command="module load x",
                              server_idle_timeout=30)
    regular = commands.command("regular", "env-a.tar.gz", "ff")
    assert regular.startswith("module load x; ./poncho_run -e env-a.tar.gz -w 60 -s ff "
                              "--cache-dir /scratch/c -- python run_function.py fn.pkl "
                              "result.pkl 2>&1")
    serverless = commands.command("serverless", "env-a.tar.gz", "ff", ("numpy", "scipy.linalg"))
    argv = shlex.split(serverless.split("; ", 1)[1].removesuffix(" 2>&1"))
    assert argv[argv.index("--") + 1:] == ["sh", "poncho_serve", "--idle", "30", "--preload",
                                           "numpy,scipy.linalg", "--", "fn.pkl", "result.pkl"]
    assert [f.remote for f in commands.inputs("regular")] == ["poncho_run", "run_function.py"]
    assert [f.remote for f in commands.inputs("serverless")] == [
        "poncho_run", "run_function.py", "poncho_serve", "function_server.py", "call_process.py",
        "huge_pages.py", "pool_init.py"]
    assert all(f.cache for f in commands.inputs("serverless"))


def test_serverless_tasks_ship_every_file_poncho_serve_copies_beside_the_server(tmp_path: Path):
    """poncho_serve's own list (sh) must match SERVER_FILES, which the tasks ship."""
    loop = re.search(r"^\s*for _f in ([^;]+); do$", poncho_serve_path().read_text(), re.M)
    assert loop, "install_server_files' loop not found in poncho_serve"
    assert sorted(loop.group(1).split()) == sorted(SERVER_FILES)
    shipped = {f.remote for f in WorkerCommands(stage_worker_files(tmp_path)).inputs("serverless")}
    assert set(SERVER_FILES) <= shipped
    assert all(shim_file(name).is_file() for name in SERVER_FILES)


def test_staged_worker_files_are_named_by_content(tmp_path: Path):
    first = stage_worker_files(tmp_path)
    again = stage_worker_files(tmp_path)
    assert first == again
    for name, staged in first.items():
        local = Path(staged.local)
        assert local.name.startswith(f"{name}-") and len(local.name) == len(name) + 17
        assert local.stat().st_mode & 0o755 == 0o755


def test_layered_env_command_and_inputs_carry_the_code_layer(tmp_path: Path):
    from parsl_poncho.layers import CodeLayer, LayeredEnv
    from parsl_poncho.store import Env

    commands = WorkerCommands(stage_worker_files(tmp_path), unpack_timeout=60,
                              worker_cache_dir="/scratch/c")
    base = Env("b" * 64, tmp_path / "env-b.tar.gz", "e" * 64, 1000)
    code = CodeLayer("c" * 64, tmp_path / f"code-{'c' * 64}.tar.gz", "d" * 64, 10, ("helper",))
    env = LayeredEnv.of(base, code)
    argv = shlex.split(commands.command_for("regular", env).removesuffix(" 2>&1"))
    assert argv[:argv.index("--")] == [
        "./poncho_run", "-e", f"env-{'b' * 64}.tar.gz", "-w", "60", "-s", "e" * 64,
        "-c", f"code-{'c' * 64}.tar.gz", "--code-sha256", "d" * 64, "--cache-dir", "/scratch/c"]
    files = commands.inputs("serverless", env)
    assert [f.remote for f in files][-2:] == [f"env-{'b' * 64}.tar.gz", f"code-{'c' * 64}.tar.gz"]
    assert files[-1].local == str(code.tarball) and all(f.cache for f in files)
    plain = LayeredEnv.of(base, None)
    assert "-c" not in shlex.split(commands.command_for("regular", plain))
    assert [f.remote for f in commands.inputs("regular", plain)][-1] == f"env-{'b' * 64}.tar.gz"
    assert plain.hash == base.hash and env.hash != base.hash


def test_a_server_scope_adds_pool_options_and_the_executor_keys_are_not_resources(tmp_path):
    from parsl_poncho.exec_modes import (
        CACHED_INPUTS_KEY,
        SERVER_KEY,
        ServerCall,
        ServerScope,
        server_call,
        without_executor_keys,
    )
    from parsl_poncho.tasks import staged_files, wq_resources
    from parsl_poncho.workqueue import FileToWq

    scope = ServerScope("p1", "poncho-init-ab.pkl", 5)
    spec = {"cores": 1, "exec_mode": "serverless", SERVER_KEY: scope,
            CACHED_INPUTS_KEY: (FileToWq("/x/poncho-init-ab.pkl", "poncho-init-ab.pkl"),)}
    assert without_executor_keys(spec) == {"cores": 1}
    assert wq_resources(spec) == {"cores": 1}
    call = server_call("serverless", ["numpy"], spec)
    assert call == ServerCall(("numpy",), scope)
    assert server_call("regular", ["numpy"], spec) is None
    ins, _outs = staged_files((), {}, spec)
    assert ins == (FileToWq("/x/poncho-init-ab.pkl", "poncho-init-ab.pkl", cache=True),)
    commands = WorkerCommands(stage_worker_files(tmp_path))
    line = commands.command("serverless", "env-a.tar.gz", None, call.preload, scope=scope)
    argv = shlex.split(line.removesuffix(" 2>&1"))
    assert argv[argv.index("poncho_serve"):] == [
        "poncho_serve", "--idle", "300", "--preload", "numpy", "--pool", "p1", "--init",
        "poncho-init-ab.pkl", "--max-calls", "5", "--", "fn.pkl", "result.pkl"]


def test_bad_server_scopes_and_cached_inputs_are_refused():
    from parsl_poncho.exec_modes import ServerScope, server_call
    from parsl_poncho.tasks import staged_files

    with pytest.raises(ExecutorError, match=r"pool 'a b' must be 1-40 letters"):
        ServerScope("a b")
    with pytest.raises(ExecutorError, match=r"init '../x' must be a plain file name"):
        ServerScope("p", "../x")
    with pytest.raises(ExecutorError, match=r"max_calls is 0; use None or >= 1"):
        ServerScope("p", None, 0)
    with pytest.raises(ExecutorError, match=r"\['function_server'\] is 'p'; use a"):
        server_call("serverless", [], {"function_server": "p"})
    with pytest.raises(ExecutorError, match=r"\['cached_inputs'\] is \['x'\]; use a sequence"):
        staged_files((), {}, {"cached_inputs": ["x"]})
