"""poncho_run -c: a code layer unpacked once per node beside the env, importable ahead of it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from shim_helpers import Member, ShimRunner, make_env_tarball, write_tarball
from test_shim import EXIT_CORRUPT, EXIT_UNSAFE, EXIT_USAGE, parse, unsafe_cases
from tools import require_tool

SHOW = ('echo "PYPATH=${PYTHONPATH-unset}"; echo "LAYER=${PARSL_PONCHO_CODE_LAYER-unset}"; '
        'echo "PREFIX=$CONDA_PREFIX"; echo "PATH0=${PATH%%:*}"; ls -l /proc/$$/fd')


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code(path: Path, factor: int = 1, extra: list[Member] | None = None) -> Path:
    members = [Member("helper.py", f"FACTOR = {factor}\n".encode()),
               Member("mypkg", kind="dir", mode=0o755), Member("mypkg/__init__.py", b"")]
    return write_tarball(path, members + (extra or []))


@pytest.fixture()
def shim(tmp_path: Path) -> ShimRunner:
    return ShimRunner(tmp_path)


@pytest.fixture()
def env(tmp_path: Path) -> Path:
    return make_env_tarball(tmp_path / "env-fake.tar.gz")


def test_code_layer_unpacks_once_and_goes_on_pythonpath(shim, env, tmp_path):
    code = _code(tmp_path / "code-k1.tar.gz")
    runs = [shim.run("-e", env, "-c", code, "--code-sha256", _sha(code), "--", "sh", "-c", SHOW,
                     PYTHONPATH="/host/site") for _ in range(3)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    layer = shim.cache / "code" / f"code-k1-{_sha(code)[:16]}"
    seen = parse(runs[0].stdout)
    assert seen["PYPATH"] == seen["LAYER"] == str(layer)  # the host's PYTHONPATH is gone
    assert seen["PREFIX"] == str(shim.cache / "env-fake")
    assert seen["PATH0"] == str(shim.cache / "env-fake" / "bin")
    assert (layer / "helper.py").read_text() == "FACTOR = 1\n"
    assert (layer / ".poncho-ready").is_file()
    # the env is marked in use on fd 9, the layer on fd 7, for as long as the command runs
    assert f"9 -> {shim.cache / 'env-fake' / '.poncho-ready'}" in runs[0].stdout
    assert f"7 -> {layer / '.poncho-ready'}" in runs[0].stdout
    assert shim.unpack_count() == 1  # conda-unpack ran for the env only, once
    inode = (layer / ".poncho-ready").stat().st_ino
    assert all((layer / ".poncho-ready").stat().st_ino == inode for _ in runs)
    # a new code layer beside the same env: the env is not unpacked again
    new = _code(tmp_path / "code-k2.tar.gz", factor=2)
    again = shim.run("-e", env, "-c", new, "--", "sh", "-c", SHOW)
    assert again.returncode == 0, again.stderr
    assert parse(again.stdout)["PYPATH"] == str(shim.cache / "code" / "code-k2")
    assert shim.unpack_count() == 1
    assert sorted(p.name for p in (shim.cache / "code").iterdir()) == [
        "code-k1-" + _sha(code)[:16], "code-k2"]


def test_code_layer_is_imported_ahead_of_the_env(shim, env, tmp_path):
    code = _code(tmp_path / "code-k.tar.gz", factor=7)
    script = ("import os, sys, helper; print('F', helper.FACTOR); "
              "sp = [i for i, p in enumerate(sys.path) if p.endswith('site-packages')]; "
              "print('AHEAD', sys.path.index(os.environ['PYTHONPATH']) < min(sp))")
    result = shim.run("-e", env, "-c", code, "--", sys.executable, "-c", script)
    assert result.returncode == 0, result.stderr
    assert "F 7" in result.stdout and "AHEAD True" in result.stdout


def test_code_layer_sha256_mismatch_is_65(shim, env, tmp_path):
    code = _code(tmp_path / "code-k.tar.gz")
    result = shim.run("-e", env, "-c", code, "--code-sha256", "0" * 64, "--", "true")
    assert result.returncode == EXIT_CORRUPT, result.stderr
    assert "sha256 mismatch" in result.stderr
    assert [p.name for p in (shim.cache / "code").iterdir()] == []


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-climbs", "device"])
def test_unsafe_code_layer_is_66(shim, env, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    code = _code(tmp_path / "code-evil.tar.gz", extra=unsafe_cases(outside)[case])
    result = shim.run("-e", env, "-c", code, "--", "touch", str(outside / "ran"))
    assert result.returncode == EXIT_UNSAFE, result.stderr
    assert "unsafe archive" in result.stderr
    assert not (outside / "ran").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert [p.name for p in (shim.cache / "code").iterdir()] == []


@pytest.mark.parametrize(("args", "why"), [
    (("--code-sha256", "0" * 64), "--code-sha256 needs -c"),
    (("-c", "missing.tar.gz"), "code layer missing.tar.gz does not exist"),
    (("-c", "CODE", "--code-sha256", "xyz"), "--code-sha256 takes a sha256"),
    (("-c", "CODE", "-u", "somewhere"), "cannot be combined with -u"),
])
def test_code_layer_usage_errors(shim, env, tmp_path, args, why):
    code = _code(tmp_path / "code-k.tar.gz")
    args = tuple(str(code) if a == "CODE" else a for a in args)
    result = shim.run("-e", env, *args, "--", "true")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert why in result.stderr


def test_code_layer_under_busybox(shim, env, tmp_path):
    busybox = require_tool("busybox")
    code = _code(tmp_path / "code-k.tar.gz")
    from parsl_poncho.shim import poncho_run_path

    result = subprocess.run([str(busybox), "sh", str(poncho_run_path()), "-e", str(env), "-c",
                             str(code), "--", "sh", "-c", SHOW], env=shim.environ(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout)["PYPATH"] == str(shim.cache / "code" / "code-k")
