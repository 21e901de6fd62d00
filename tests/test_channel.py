"""The offline channel: the running CPython, pip and setuptools as conda packages."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
import zipfile

import pytest

from parsl_poncho.build import channel as channel_mod
from parsl_poncho.build import seed_channel
from parsl_poncho.cli.main import main as umbrella_main

PYVERSION = ".".join(str(p) for p in sys.version_info[:3])
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def unzstd_raw(data: bytes) -> bytes:
    """Decode a zstd frame made only of raw blocks (what channel.py writes)."""
    assert data[:4] == (0xFD2FB528).to_bytes(4, "little")
    pos, out = 6, []
    while True:
        header = int.from_bytes(data[pos:pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        assert kind == 0, "not a raw block"
        out.append(data[pos + 3:pos + 3 + size])
        pos += 3 + size
        if last:
            assert pos == len(data)
            return b"".join(out)


def conda_tarballs(pkg):
    """(info tar, pkg tar) of a .conda file."""
    with zipfile.ZipFile(pkg) as archive:
        assert json.loads(archive.read("metadata.json")) == {"conda_pkg_format_version": 2}
        names = archive.namelist()
        info = next(n for n in names if n.startswith("info-"))
        content = next(n for n in names if n.startswith("pkg-"))
        return (tarfile.open(fileobj=io.BytesIO(unzstd_raw(archive.read(info)))),
                tarfile.open(fileobj=io.BytesIO(unzstd_raw(archive.read(content)))))


def _repodata(channel, subdir, key="packages"):
    return json.loads((channel / subdir / "repodata.json").read_text())[key]


@pytest.mark.slow
def test_seeded_channel_has_python_pip_setuptools(seeded_channel):
    python = [r for r in _repodata(seeded_channel, channel_mod.current_subdir(),
                                   "packages.conda").values() if r["name"] == "python"]
    assert len(python) == 1 and python[0]["version"] == PYVERSION
    assert any(dep.startswith("__glibc >=") for dep in python[0]["depends"])
    noarch = {r["name"]: r for r in _repodata(seeded_channel, "noarch", "packages.conda").values()}
    assert {"pip", "setuptools"} <= set(noarch)
    assert noarch["pip"]["noarch"] == "python"
    assert not (seeded_channel / ".tmp").exists()


@pytest.mark.slow
def test_seed_again_is_a_cheap_no_op(seeded_channel):
    packages = sorted(seeded_channel.glob("*/*.conda"))
    mtimes = [p.stat().st_mtime for p in packages]
    start = time.perf_counter()
    assert seed_channel(seeded_channel) == seeded_channel
    assert time.perf_counter() - start < 5  # nothing is rebuilt (mtimes below); loaded-CI margin
    assert [p.stat().st_mtime for p in packages] == mtimes


@pytest.mark.slow
def test_python_package_is_relocatable(seeded_channel):
    pkg = next((seeded_channel / channel_mod.current_subdir()).glob("python-*.conda"))
    info, content = conda_tarballs(pkg)
    with info, content:
        paths = json.load(info.extractfile("info/paths.json"))["paths"]
        config = content.extractfile(f"bin/python{PYVER}-config").read().decode()
        names = set(content.getnames())
    by_path = {p["_path"]: p for p in paths}
    # text placeholders only: the new prefix is usually longer than the old one
    assert all(p.get("file_mode", "text") == "text" for p in paths)
    assert by_path[f"bin/python{PYVER}"]["path_type"] == "hardlink"
    assert by_path["bin/python"]["path_type"] == "softlink"
    assert sys.base_prefix not in config  # conda-unpack never rewrites bin/python*
    assert "bin/pip" not in names and f"lib/python{PYVER}/site-packages/pip" not in names
    assert not any(n.startswith(f"lib/python{PYVER}/test/") for n in names)
    assert not any(n.endswith(".a") for n in names)
    assert any(n.endswith(f".{sys.implementation.cache_tag}.pyc") for n in names)


@pytest.mark.slow
def test_cli_channel_seed_json(seeded_channel, capsys):
    assert umbrella_main(["channel", "seed", str(seeded_channel), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["channel"] == str(seeded_channel)
    assert summary["url"] == seeded_channel.as_uri()
    assert any(p.startswith("noarch/pip-") for p in summary["packages"])


def test_cli_channel_without_action(capsys):
    assert umbrella_main(["channel"]) == 2
    assert "seed" in capsys.readouterr().out


def test_marker_mismatch_means_reseed(tmp_path):
    fingerprint = channel_mod.interpreter_fingerprint()
    marker = tmp_path / channel_mod.MARKER_NAME
    assert not channel_mod._marker_matches(marker, fingerprint, tmp_path)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "files": ["noarch/x.tar.bz2"]}))
    assert not channel_mod._marker_matches(marker, fingerprint, tmp_path)  # file missing
    (tmp_path / "noarch").mkdir()
    (tmp_path / "noarch" / "x.tar.bz2").write_bytes(b"")
    assert channel_mod._marker_matches(marker, fingerprint, tmp_path)
    other = dict(fingerprint, version="2.7.18")
    assert not channel_mod._marker_matches(marker, other, tmp_path)


def test_stale_packages_of_another_interpreter_are_removed(tmp_path):
    (tmp_path / "noarch").mkdir()
    old = tmp_path / "noarch" / "pip-1.0-py_deadbeef_poncho.tar.bz2"
    old2 = tmp_path / "noarch" / "pip-1.0-py_deadbeef_poncho.conda"
    new = tmp_path / "noarch" / "pip-2.0-py_cafe_poncho.conda"
    foreign = tmp_path / "noarch" / "other-1.0-0.tar.bz2"
    for path in (old, old2, new, foreign):
        path.write_bytes(b"")
    channel_mod._remove_stale(tmp_path, ["noarch/pip-2.0-py_cafe_poncho.conda"])
    assert not old.exists() and not old2.exists() and new.exists() and foreign.exists()


@pytest.mark.slow
def test_two_processes_seeding_one_new_channel(tmp_path):
    import subprocess

    dest = tmp_path / "channel"
    code = ("import sys; from pathlib import Path; from parsl_poncho.build import seed_channel;"
            "print(seed_channel(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {out.strip() for out, _ in outs} == {str(dest)}
    python = [r for r in _repodata(dest, channel_mod.current_subdir(), "packages.conda").values()
              if r["name"] == "python"]
    assert len(python) == 1
    assert not list(dest.glob("*/*.tmp")) and not list(dest.glob("seed-*"))
