"""End-to-end builds: a spec becomes a tarball that unpacks anywhere and runs (real solve, pip,
data, conda-pack), and bad inputs that fail during the build with a clear BuildError."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from parsl_poncho.build import BuildOptions, Manifest, build_env, write_manifest
from parsl_poncho.codehash import hash_code
from parsl_poncho.errors import BuildError
from parsl_poncho.spec import GitData, HttpData, LocalCode, Spec

PIP_PACKAGES = ("six==1.17.0", "idna")
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


# -- helpers --------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def make_git_repo(path: Path) -> Path:
    """A repo whose tag v1 has notes.txt == 'version one' (HEAD has 'version two')."""
    path.mkdir()
    _git(path, "init", "--quiet")
    (path / "notes.txt").write_text("version one\n")
    _git(path, "add", "notes.txt")
    _git(path, "commit", "--quiet", "-m", "one")
    _git(path, "tag", "v1")
    (path / "notes.txt").write_text("version two\n")
    _git(path, "commit", "--quiet", "-am", "two")
    return path


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(tarball: Path, dest: Path) -> Path:
    """Untar like a user would, then run conda-unpack with the env's own python."""
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(
            dest
        )
    subprocess.run([str(dest / "bin" / "python"), str(dest / "bin" / "conda-unpack")],
                   check=True, capture_output=True, env=clean_env())
    return dest


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA"))}
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra or {})
    return env


def data_env(env_dir: Path) -> dict[str, str]:
    """NAME=<env>/RELPATH for every line of etc/parsl-poncho/data.env (what the shim does)."""
    lines = (env_dir / "etc" / "parsl-poncho" / "data.env").read_text().splitlines()
    return {name: str(env_dir / rel) for name, rel in (line.split("=", 1) for line in lines)}


def assert_clean(workdir: Path, output: Path) -> None:
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}*")), "temp tarball left behind"
    assert not workdir.exists() or not any(workdir.iterdir()), "scratch build dir left behind"


# -- the round trip ---------------------------------------------------------------------------


@pytest.mark.slow
def test_build_unpack_elsewhere_and_run(tmp_path, build_options, http_root):
    root, base_url = http_root
    (root / "reference.dat").write_bytes(b"reference data\n")
    (root / "dataset.tar.gz").write_bytes(make_tar_gz({"dataset/a.txt": b"alpha\n"}))
    (root / "table.csv.gz").write_bytes(gzip.compress(b"x,y\n1,2\n"))
    ref_sha = hashlib.sha256(b"reference data\n").hexdigest()
    repo = make_git_repo(tmp_path / "repo")
    mod = tmp_path / "src" / "mymod.py"
    mod.parent.mkdir()
    mod.write_text("ANSWER = 42\n")
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import value\n")
    (pkg / "core.py").write_text("def value():\n    return 'pkg'\n")
    spec = Spec(
        channels=("conda-forge",),
        conda=(f"python={PYVER}", "pip"),
        pip=PIP_PACKAGES,
        git={"REPO_DIR": GitData(remote=str(repo), ref="v1")},
        http={
            "REFERENCE_DB": HttpData(url=f"{base_url}/reference.dat", sha256=ref_sha),
            "DATASET": HttpData(url=f"{base_url}/dataset.tar.gz", type="tar",
                                compression="gzip"),
            "TABLE": HttpData(url=f"{base_url}/table.csv.gz", compression="gzip"),
        },
        local=(LocalCode("mymod", str(mod), hash_code(mod)),
               LocalCode("mypkg", str(pkg), hash_code(pkg))),
    )
    output = tmp_path / "out" / "env-test.tar.gz"
    lines: list[str] = []
    manifest = build_env(spec, output, options=build_options, progress=lines.append)

    # the build dir is gone; only the tarball remains, readable by everyone
    assert_clean_workdir = build_options.workdir
    assert not any(assert_clean_workdir.iterdir())
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert manifest.size == output.stat().st_size
    assert manifest.sha256 == hashlib.sha256(output.read_bytes()).hexdigest()
    names = {p["name"].lower() for p in manifest.lock["pip"]}
    assert {"six", "idna"} <= names
    assert {"python", "pip"} <= {c["name"] for c in manifest.lock["conda"]}
    assert set(manifest.phases) >= {"solve", "install", "pip", "data", "code", "pack"}
    assert any("pack" in line for line in lines)
    write_manifest(manifest, tmp_path / "manifest.json")
    again = Manifest.from_dict(json.loads((tmp_path / "manifest.json").read_text()))
    assert again.sha256 == manifest.sha256

    # unpack at a longer path than the build prefix, fix prefixes, run there
    env_dir = unpack(output, tmp_path / ("relocated-" + "x" * 120) / "env")
    variables = data_env(env_dir)
    record = json.loads((env_dir / "etc" / "parsl-poncho" / "env.json").read_text())
    assert record["lock"] == manifest.lock
    assert set(variables) == {"REPO_DIR", "REFERENCE_DB", "DATASET", "TABLE"}
    code = (
        "import os, sys, six, idna, mymod, mypkg\n"
        "assert sys.prefix == os.environ['EXPECT_PREFIX'], sys.prefix\n"
        "assert six.__file__.startswith(sys.prefix), six.__file__\n"
        "print(mymod.ANSWER, mypkg.value(), idna.encode('example.org').decode())\n"
        "print(open(os.path.join(os.environ['REPO_DIR'], 'notes.txt')).read().strip())\n"
        "print(open(os.environ['REFERENCE_DB']).read().strip())\n"
        "print(open(os.path.join(os.environ['DATASET'], 'dataset', 'a.txt')).read().strip())\n"
        "print(open(os.environ['TABLE']).read().splitlines()[1])\n"
    )
    env = clean_env({**variables, "EXPECT_PREFIX": str(env_dir),
                     "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}"})
    result = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == [
        "42 pkg example.org", "version one", "reference data", "alpha", "1,2"
    ]
    # pip still works in the relocated env (its shebangs and config are not tied to the build)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "--version"], env=env,
                         capture_output=True, text=True)
    assert pip.returncode == 0 and str(env_dir) in pip.stdout, pip.stdout + pip.stderr


# -- bad inputs that only the build can find ---------------------------------------------------


@pytest.mark.slow
def test_unsatisfiable_conda_dependency_names_the_package(tmp_path, build_options):
    spec = Spec(conda=(f"python={PYVER}", "no-such-conda-package-xyz"))
    output = tmp_path / "env.tar.gz"
    with pytest.raises(BuildError, match="no-such-conda-package-xyz") as info:
        build_env(spec, output, options=build_options, progress=lambda _: None)
    assert info.value.step == "solve"
    assert info.value.package == "no-such-conda-package-xyz"
    assert "No candidates" in info.value.log_tail
    assert_clean(build_options.workdir, output)


@pytest.mark.slow
def test_conda_version_that_does_not_exist(tmp_path, build_options):
    spec = Spec(conda=("python>=3.99",))
    with pytest.raises(BuildError, match="no solution for 'python'") as info:
        build_env(spec, tmp_path / "env.tar.gz", options=build_options, progress=lambda _: None)
    assert info.value.package == "python"
    assert "seeded local channel holds only the Python" in str(info.value)


@pytest.mark.slow
def test_pip_package_that_does_not_exist(tmp_path, build_options):
    name = "parsl-poncho-no-such-dist-xyz"
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=(f"{name}==1.0",))
    output = tmp_path / "env.tar.gz"
    with pytest.raises(BuildError, match=f"could not install '{name}'") as info:
        build_env(spec, output, options=build_options, progress=lambda _: None)
    assert info.value.step == "pip"
    assert info.value.package == name
    assert name in info.value.log_tail
    assert_clean(build_options.workdir, output)


@pytest.mark.slow
def test_pip_package_missing_with_pip_installer(tmp_path, build_options):
    name = "parsl-poncho-no-such-dist-xyz"
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=(name,))
    options = replace(build_options, installer="pip")
    with pytest.raises(BuildError, match=f"pip could not install '{name}'") as info:
        build_env(spec, tmp_path / "env.tar.gz", options=options, progress=lambda _: None)
    assert "No matching distribution found" in info.value.log_tail


@pytest.mark.slow
def test_pip_cannot_replace_conda_managed_pip(tmp_path, build_options):
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=("pip==24.0",))
    with pytest.raises(BuildError, match="installed by conda") as info:
        build_env(spec, tmp_path / "env.tar.gz", options=build_options, progress=lambda _: None)
    assert info.value.package == "pip"


@pytest.mark.slow
def test_sha256_mismatch(tmp_path, build_options, http_root):
    root, base_url = http_root
    (root / "f.dat").write_bytes(b"actual\n")
    spec = Spec(conda=(f"python={PYVER}",),
                http={"F": HttpData(url=f"{base_url}/f.dat", sha256="ab" * 32)})
    output = tmp_path / "env.tar.gz"
    with pytest.raises(BuildError, match="sha256 mismatch") as info:
        build_env(spec, output, options=build_options, progress=lambda _: None)
    assert info.value.step == "data" and info.value.package == "F"
    assert_clean(build_options.workdir, output)


def test_unreachable_channel(tmp_path, build_cache_dir):
    spec = Spec(channels=("http://127.0.0.1:9/no-channel",), conda=("python",))
    options = BuildOptions(cache_dir=build_cache_dir, workdir=tmp_path / "work")
    output = tmp_path / "env.tar.gz"
    with pytest.raises(BuildError, match="reachable") as info:
        build_env(spec, output, options=options, progress=lambda _: None)
    assert info.value.step == "solve"
    assert "127.0.0.1:9" in str(info.value)
    assert_clean(options.workdir, output)


def test_missing_local_channel_directory(tmp_path, build_cache_dir):
    spec = Spec(channels=(str(tmp_path / "nowhere"),), conda=("python",))
    options = BuildOptions(cache_dir=build_cache_dir, workdir=tmp_path / "work")
    with pytest.raises(BuildError, match="nowhere"):
        build_env(spec, tmp_path / "env.tar.gz", options=options, progress=lambda _: None)


@pytest.mark.parametrize(
    "remote, ref, why",
    [
        ("ext::sh -c touch% {marker}", "HEAD", "transport helper"),
        ("fd::3", "HEAD", "transport helper"),
        ("--upload-pack=touch {marker}", "HEAD", "starts with '-'"),
        ("https://example.org/repo.git", "--output={marker}", "starts with '-'"),
    ],
)
def test_git_remote_refused_before_anything_runs(tmp_path, remote, ref, why):
    marker = tmp_path / "pwned"
    spec = Spec(conda=("python",),
                git={"D": GitData(remote=remote.format(marker=marker), ref=ref.format(
                    marker=marker))})
    options = BuildOptions(cache_dir=tmp_path / "cache", workdir=tmp_path / "work",
                           channels=(str(tmp_path / "no-channel"),))
    with pytest.raises(BuildError, match=why) as info:
        build_env(spec, tmp_path / "env.tar.gz", options=options, progress=lambda _: None)
    assert info.value.step == "data" and info.value.package == "D"
    assert not marker.exists()


@pytest.mark.slow
def test_git_ref_that_does_not_exist(tmp_path, build_options):
    repo = make_git_repo(tmp_path / "repo")
    spec = Spec(conda=(f"python={PYVER}",), git={"R": GitData(remote=str(repo), ref="nope")})
    with pytest.raises(BuildError, match="ref 'nope' not found"):
        build_env(spec, tmp_path / "env.tar.gz", options=build_options, progress=lambda _: None)


def test_cross_platform_build_with_pip_is_refused(tmp_path):
    options = BuildOptions(platform="osx-arm64", cache_dir=tmp_path / "c", workdir=tmp_path / "w")
    with pytest.raises(BuildError, match="cannot build for 'osx-arm64'"):
        build_env(Spec(conda=("python",), pip=("six",)), tmp_path / "e.tar.gz", options=options,
                  progress=lambda _: None)


def test_build_cleans_scratch_on_failure(tmp_path, monkeypatch):
    from parsl_poncho.build import conda as conda_mod

    def explode(self, request):
        (request.prefix / "partial").mkdir(parents=True)
        raise BuildError("boom", step="solve")

    monkeypatch.setattr(conda_mod.RattlerBackend, "create", explode)
    options = BuildOptions(cache_dir=tmp_path / "cache", workdir=tmp_path / "work")
    with pytest.raises(BuildError, match="boom"):
        build_env(Spec(conda=("python",)), tmp_path / "env.tar.gz", options=options,
                  progress=lambda _: None)
    assert not any((tmp_path / "work").iterdir())
    shutil.rmtree(tmp_path / "work")


# -- pip: hermetic, honours find-links ---------------------------------------------------------


def make_wheel(wheelhouse: Path, name: str = "poncho_test_wheel", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (not on PyPI) for find-links tests."""
    import base64
    import zipfile

    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 'from the wheelhouse'\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        .encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = wheelhouse / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_pip_part_is_hermetic_and_uses_find_links(tmp_path, build_options, monkeypatch,
                                                  installer):
    # host settings that would break the build if they leaked in
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    wheelhouse = tmp_path / "wheels"
    make_wheel(wheelhouse)
    spec = Spec(conda=(f"python={PYVER}", "pip"), pip=("poncho-test-wheel==1.0", "six"))
    options = replace(build_options, installer=installer, find_links=(str(wheelhouse),))
    manifest = build_env(spec, tmp_path / "env.tar.gz", options=options,
                         progress=lambda _: None)
    pip_lock = {p["name"].lower().replace("_", "-"): p for p in manifest.lock["pip"]}
    assert pip_lock["poncho-test-wheel"]["version"] == "1.0"
    assert pip_lock["poncho-test-wheel"]["installer"] == installer
    assert "six" in pip_lock
