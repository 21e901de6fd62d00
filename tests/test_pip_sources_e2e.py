"""The user's pip configuration reaches builds, and its credentials reach nothing else.

A private index on loopback that answers only with the right password and holds one package
(a wheel made here), named with that password in PIP_EXTRA_INDEX_URL, and a wheel directory in
PIP_FIND_LINKS: the build must fetch the package with the password, the task must import it,
the env hash must follow the configuration, and the password must appear in no spec, cache
file (uv's download cache included), log or task command.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "pip_config"
HIDDEN_WORKER = Path(__file__).parent / "e2e" / "three_apps" / "hidden_worker.sh"
SECRET = "pa55-w0rd-x9"
PROBE = "poncho-private-probe"


def make_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of PROBE 1.0 (what a group's private index would hold)."""
    name, version = PROBE.replace("-", "_"), "1.0"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "WHERE = 'the private index'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    files[f"{info}/RECORD"] = "".join(
        f"{path},sha256={digest(text)},{len(text.encode())}\n" for path, text in files.items()
    ) + f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


class PrivateIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index holding only PROBE, behind HTTP basic auth."""

    seen: list[str] = []
    wheel: tuple[str, bytes] = ("", b"")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.answer(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 - uv asks for a wheel's size first
        self.answer(with_body=False)

    def answer(self, *, with_body: bool) -> None:
        expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        authorised = self.headers.get("Authorization") == expected
        self.seen.append(("ok " if authorised else "refused ") + self.path)
        name, data = self.wheel
        if not authorised:
            body, status, kind = b"", 401, "text/html"
        elif self.path.rstrip("/") == f"/simple/{PROBE}":
            digest = hashlib.sha256(data).hexdigest()
            body = f'<a href="/files/{name}#sha256={digest}">{name}</a>'.encode()
            status, kind = 200, "text/html"
        elif self.path == f"/files/{name}":
            body, status, kind = data, 200, "application/octet-stream"
        else:
            body, status, kind = b"", 404, "text/html"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if not authorised:
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def private_index():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PrivateIndex)
    PrivateIndex.seen = []
    PrivateIndex.wheel = make_wheel()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://user:{SECRET}@127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def run_script(tmp_path: Path, run: str, environ: dict[str, str]) -> dict:
    run_dir = tmp_path / run
    run_dir.mkdir()
    # PARSL_PONCHO_CACHE too: uv's and rattler's download caches then live in the checked cache
    env = {**environ, "RUN_DIR": str(run_dir), "PONCHO_CACHE": str(tmp_path / "cache"),
           "PARSL_PONCHO_CACHE": str(tmp_path / "cache"),
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
    assert first["value"] == "the private index"  # the task imported the private package
    fetched = [seen for seen in PrivateIndex.seen if seen.endswith(".whl")]
    assert fetched and all(seen.startswith("ok ") for seen in PrivateIndex.seen), (
        PrivateIndex.seen)  # every request carried the password
    second = run_script(tmp_path, "run-b", {**base, "PIP_FIND_LINKS": str(wheels_b)})
    assert second["value"] == "the private index"
    assert second["hash"] != first["hash"]  # the configuration is in the hash

    manifests = list((tmp_path / "cache" / "envs").glob("*/manifest.json"))
    assert len(manifests) == 2
    spec = json.loads(manifests[0].read_text())["spec"]
    assert "127.0.0.1" in json.dumps(spec)  # the index is in the spec, without its password
    assert list((tmp_path / "cache" / "uv").rglob(f"{PROBE.replace('-', '_')}*"))  # cached
    for root in (tmp_path / "cache", tmp_path / "run-a", tmp_path / "run-b"):
        assert files_containing(root, SECRET.encode()) == [], root
    debug_log = next((tmp_path / "run-a").glob("*/PonchoExecutor/wq/debug_log"))
    assert "poncho_run" in debug_log.read_text(errors="replace")  # task commands are logged
