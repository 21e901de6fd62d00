"""A pool's worker side, run for real: poncho_serve --pool/--init/--max-calls with
function_server.py and pool_init.py, through poncho_run (the env's python is this interpreter),
and the same chunks in regular mode (run_function.py alone in the sandbox)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from test_function_server import Node, wait_for

from parsl_poncho.multiprocessing import _chunk
from parsl_poncho.multiprocessing.link import APPLY, MAP, STAR
from parsl_poncho.shim import run_function_path

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(_chunk)

TABLE: dict | None = None
SCRATCH: list = []


def build_table(n: int, log: str) -> None:
    """An initializer: a module global (this module travels by value, like __main__)."""
    global TABLE
    TABLE = {i: i * i for i in range(n)}
    with open(log, "a") as f:
        f.write("init\n")


def look_up(i: int) -> tuple[int, int]:
    SCRATCH.append(i)  # a call's write to a global: gone after the chunk
    return TABLE[i], len(SCRATCH)


def add(a: int, b: int = 0) -> int:
    return a + b


def refuse(*_args: object) -> None:
    raise LookupError("no table today")


def write_init(node: Node, initializer, *args) -> str:
    data = cloudpickle.dumps((initializer, args, {}))
    name = f"poncho-init-{abs(hash(data)) % 10**8}.pkl"
    (node.sandbox / name).write_bytes(data)
    return name


def chunk(node: Node, kind: int, func, items, init: str | None) -> None:
    ref = _chunk.InitRef(init) if init else None
    node.write_call(_chunk.run_chunk, kind, func, list(items), ref)


def test_the_initializer_runs_once_per_server_and_its_globals_reach_every_chunk(tmp_path):
    node = Node(tmp_path)
    log = tmp_path / "init.log"
    init = write_init(node, build_table, 50, str(log))
    pool = ("--pool", "p1", "--init", init)
    for items in ([3, 4], [5], [6, 7, 8]):
        chunk(node, MAP, look_up, items, init)
        proc = node.run(*pool)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = node.result()
        assert report["status"] == "ok", report
        # every chunk sees the table; the calls of one chunk share a process, chunks do not
        assert report["value"] == [(i * i, n + 1) for n, i in enumerate(items)]
    assert log.read_text() == "init\n"
    server = Path(f"{node.env}.server-v1-pool-p1")
    assert "pool initializer poncho-init-" in (server / "log").read_text()
    assert not node.server_dir.exists()  # the env's shared server was never started


def test_max_calls_replaces_the_server_which_runs_the_initializer_again(tmp_path):
    node = Node(tmp_path)
    log = tmp_path / "init.log"
    init = write_init(node, build_table, 5, str(log))
    server = Path(f"{node.env}.server-v1-pool-p2")
    for n in range(4):
        chunk(node, STAR, add, [(n, 1)], init)
        proc = node.run("--pool", "p2", "--init", init, "--max-calls", "2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert node.result()["value"] == [n + 1]
    assert log.read_text() == "init\n" * 2
    text = (server / "log").read_text()
    assert text.count("] start: env") == 2
    assert wait_for(lambda: (server / "log").read_text().count("handed out 2 calls") == 2, 10)


def test_an_initializer_that_raises_fails_every_chunk_with_its_exception(tmp_path):
    node = Node(tmp_path)
    init = write_init(node, refuse)
    for _ in range(2):
        chunk(node, APPLY, add, [((1,), {"b": 2})], init)
        proc = node.run("--pool", "p3", "--init", init)
        assert proc.returncode == 10, proc.stdout + proc.stderr
        report = node.result()
        assert isinstance(report["exception"], LookupError)
        assert "raised by the pool's initializer" in "".join(report["exception"].__notes__)


def test_in_regular_mode_the_chunk_runs_the_initializer_itself(tmp_path):
    node = Node(tmp_path)
    log = tmp_path / "init.log"
    init = write_init(node, build_table, 10, str(log))
    chunk(node, MAP, look_up, [2, 3], init)
    proc = subprocess.run([sys.executable, str(run_function_path()), "fn.pkl", "result.pkl"],
                          cwd=node.sandbox, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert node.result()["value"] == [(4, 1), (9, 2)]
    assert log.read_text() == "init\n"


def test_a_chunk_without_initializer_runs_its_calls_in_order(tmp_path):
    node = Node(tmp_path)
    chunk(node, APPLY, add, [((1,), {"b": 2}), ((5,), {})], None)
    proc = node.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert node.result()["value"] == [3, 5]


@pytest.mark.parametrize("options, message", [
    (("--init", "x.pkl"), "--init and --max-calls need --pool"),
    (("--pool", "a/b"), "--pool takes letters, digits"),
    (("--pool", "p", "--init", "../x"), "--init takes a file name in the sandbox"),
    (("--pool", "p", "--max-calls", "two"), "--max-calls takes a whole number"),
])
def test_poncho_serve_refuses_bad_pool_options(tmp_path, options, message):
    node = Node(tmp_path)
    proc = node.run(*options)
    assert proc.returncode == 20
    assert message in proc.stderr


def test_an_idle_pool_server_removes_its_directory(tmp_path):
    node = Node(tmp_path)
    init = write_init(node, build_table, 5, str(tmp_path / "init.log"))
    chunk(node, MAP, look_up, [1], init)
    proc = node.run("--pool", "p4", "--init", init, "--idle", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = Path(f"{node.env}.server-v1-pool-p4")
    assert server.is_dir()
    assert wait_for(lambda: not server.exists(), 15)


def test_globals_go_only_to_functions_of_the_initializers_module(tmp_path):
    import types

    node = Node(tmp_path)
    init = write_init(node, build_table, 5, str(tmp_path / "init.log"))
    other = types.FunctionType(look_up.__code__, {"__name__": "elsewhere", "SCRATCH": [],
                                                  "TABLE": {1: "theirs"}}, "look_up")
    chunk(node, MAP, other, [1], init)
    proc = node.run("--pool", "p5", "--init", init)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert node.result()["value"] == [("theirs", 1)]  # its own TABLE, not the initializer's
