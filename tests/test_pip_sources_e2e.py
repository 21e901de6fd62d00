"""The user's pip configuration reaches builds, and its credentials reach nothing else.

A private index on loopback that answers only with the right password, named with that
password in PIP_EXTRA_INDEX_URL, and a wheel directory in PIP_FIND_LINKS: the build must use
the password (the index sees it), the env hash must follow the configuration, and the password
must appear in no spec, cache file, log or task command.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "pip_config"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"
SECRET = "pa55-w0rd-x9"


class PrivateIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index that has none of the packages, behind HTTP basic auth."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        authorised = self.headers.get("Authorization") == expected
        self.seen.append("ok" if authorised else "refused")
        self.send_response(404 if authorised else 401)
        if not authorised:
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def private_index():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PrivateIndex)
    PrivateIndex.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://user:{SECRET}@127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def run_script(tmp_path: Path, run: str, environ: dict[str, str]) -> dict:
    run_dir = tmp_path / run
    run_dir.mkdir()
    env = {**environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(tmp_path / "cache"),
           "WORKER": str(HIDDEN_WORKER), "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / "wcache")}
    proc = subprocess.run([sys.executable, str(SCENARIO / "script.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert SECRET not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python")
def test_private_index_and_wheel_dir_from_pip_config(tmp_path: Path, private_index: str) -> None:
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    wheels_a, wheels_b = tmp_path / "wheels-a", tmp_path / "wheels-b"
    wheels_a.mkdir()
    wheels_b.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    base.update(PIP_CONFIG_FILE=os.devnull, PIP_EXTRA_INDEX_URL=private_index)

    first = run_script(tmp_path, "run-a", {**base, "PIP_FIND_LINKS": str(wheels_a)})
    assert first["value"] == 42
    assert "ok" in PrivateIndex.seen and "refused" not in PrivateIndex.seen  # password used
    second = run_script(tmp_path, "run-b", {**base, "PIP_FIND_LINKS": str(wheels_b)})
    assert second["value"] == 42 and second["hash"] != first["hash"]  # config is in the hash

    manifests = list((tmp_path / "cache" / "envs").glob("*/manifest.json"))
    assert len(manifests) == 2
    spec = json.loads(manifests[0].read_text())["spec"]
    assert "127.0.0.1" in json.dumps(spec)  # the index is in the spec, without its password
    for root in (tmp_path / "cache", tmp_path / "run-a", tmp_path / "run-b"):
        assert files_containing(root, SECRET.encode()) == [], root
    debug_log = next((tmp_path / "run-a").glob("*/PonchoExecutor/wq/debug_log"))
    assert "poncho_run" in debug_log.read_text(errors="replace")  # task commands are logged
