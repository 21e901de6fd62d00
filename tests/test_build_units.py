"""Fast unit tests of the builder's pieces: channels, command lines, hermetic environment, error
parsing, data helpers, manifest, progress (no solve, no network)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from parsl_poncho.analyze.classify import Classifier
from parsl_poncho.build import (
    BuildOptions,
    Manifest,
    _util,
    build_env,
    conda,
    data,
    pip,
    progress,
    write_manifest,
)
from parsl_poncho.build import code as code_mod
from parsl_poncho.codehash import hash_code
from parsl_poncho.errors import BuildError
from parsl_poncho.spec import HttpData, LocalCode, Spec

# -- channels ---------------------------------------------------------------------------------


def test_channel_names_urls_and_paths(tmp_path, monkeypatch):
    assert conda.channel_urls("conda-forge") == ["https://conda.anaconda.org/conda-forge"]
    assert conda.channel_urls("defaults") == list(conda.DEFAULTS_URLS)
    assert conda.channel_urls("https://example.org/chan/") == ["https://example.org/chan"]
    assert conda.channel_urls("file:///srv/chan") == ["file:///srv/chan"]
    assert conda.channel_urls(str(tmp_path)) == [tmp_path.as_uri()]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    assert conda.channel_urls("./local") == [(tmp_path / "local").as_uri()]
    assert conda.channel_urls("local") == [(tmp_path / "local").as_uri()]


def test_resolve_channels_keeps_order_and_drops_duplicates():
    urls = conda.resolve_channels(["bioconda", "conda-forge", "bioconda"])
    assert urls == ["https://conda.anaconda.org/bioconda", "https://conda.anaconda.org/conda-forge"]


def test_channels_for_puts_extra_channels_first(tmp_path):
    from parsl_poncho.build import channels_for

    spec = Spec(channels=("conda-forge",), conda=("python",))
    opts = BuildOptions(extra_channels=(str(tmp_path),))
    assert channels_for(spec, opts) == [tmp_path.as_uri(), "https://conda.anaconda.org/conda-forge"]
    assert channels_for(spec, BuildOptions(channels=("bioconda",))) == [
        "https://conda.anaconda.org/bioconda"
    ]


@pytest.mark.parametrize(
    "match_spec, name",
    [("numpy", "numpy"), ("numpy>=1.2", "numpy"), ("python=3.11.7=h1_0", "python"),
     ("conda-forge::scipy 1.11.*", "scipy"), ("Pip", "pip")],
)
def test_spec_name(match_spec, name):
    assert conda.spec_name(match_spec) == name


def test_conda_specs_add_python_and_pip_when_needed():
    from parsl_poncho.build import conda_specs_for

    assert conda_specs_for(Spec(conda=("numpy",), pip=("six",)), needs_pip=False) == [
        "numpy", "python"
    ]
    assert conda_specs_for(Spec(conda=("python=3.11",), pip=("six",)), needs_pip=True) == [
        "python=3.11", "pip"
    ]
    assert conda_specs_for(Spec(conda=("zlib",)), needs_pip=False) == ["zlib"]


# -- solver errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, package",
    [
        ("Cannot solve the request because of: No candidates were found for foo-bar *.\n",
         "foo-bar"),
        ("Cannot solve the request because of: No candidates were found for python >=3.99.\n",
         "python"),
        ("The following packages are incompatible\n└─ numpy ==9 cannot be installed because "
         "there are no viable options", "numpy"),
        ("PackagesNotFoundError: The following packages are not available from current "
         "channels:\n\n  - nosuchpkg=1.0\n\nCurrent channels:", "nosuchpkg"),
        ("error    libmamba Could not solve for environment specs\n - nothing provides "
         "requested zzz 1.0", "zzz"),
        ("something else entirely", None),
    ],
)
def test_conda_package_in_error(text, package):
    assert conda.conda_package_in_error(text) == package


# -- executable backends (fake executables on PATH) --------------------------------------------

FAKE_OK = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_ARGS"
env > "$FAKE_ENV"
while [ $# -gt 0 ]; do
  if [ "$1" = "--prefix" ]; then
    mkdir -p "$2/conda-meta" "$2/share" "$2.pkg/info" "$2.pkg/share"
    echo fake > "$2/share/fake.txt"
    echo fake > "$2.pkg/share/fake.txt"
    echo share/fake.txt > "$2.pkg/info/files"
    printf '{"name": "fake", "version": "1.0", "build": "0", "files": ["share/fake.txt"],
      "link": {"source": "%s.pkg", "type": 1}}' "$2" > "$2/conda-meta/fake-1.0-0.json"
  fi
  shift
done
"""
FAKE_FAIL = """#!/bin/sh
echo 'PackagesNotFoundError: The following packages are not available from current channels:'
echo
echo '  - nosuchpkg=1.0'
exit 1
"""


def _fake(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(body)
    exe.chmod(0o755)
    return exe


def _request(tmp_path: Path, platform: str | None = None) -> conda.CondaRequest:
    return conda.CondaRequest(
        prefix=tmp_path / "env", specs=["python=3.11", "numpy>=1"],
        channels=["https://conda.anaconda.org/conda-forge", "file:///srv/chan"],
        platform=platform or conda.host_platform(), cache_dir=tmp_path / "cache",
    )


@pytest.mark.parametrize("kind", ["conda", "mamba", "micromamba"])
def test_executable_backend_command_from_path(tmp_path, monkeypatch, kind):
    _fake(tmp_path / "bin", kind, FAKE_OK)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("FAKE_ENV", str(tmp_path / "env.txt"))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    backend = conda.make_backend(kind)
    backend.create(_request(tmp_path))
    args = (tmp_path / "args").read_text().split("\n")[:-1]
    expected = ["create", "--yes", "--quiet", "--prefix", str(tmp_path / "env")]
    if kind == "micromamba":
        expected.append("--no-rc")
    expected += ["--override-channels", "--channel", "https://conda.anaconda.org/conda-forge",
                 "--channel", "file:///srv/chan", "python=3.11", "numpy>=1"]
    assert args == expected
    env = (tmp_path / "env.txt").read_text()
    assert f"CONDA_PKGS_DIRS={tmp_path / 'cache' / f'pkgs-{kind}'}" in env
    assert "PIP_FIND_LINKS" not in env
    assert ("MAMBA_ROOT_PREFIX=" in env) == (kind == "micromamba")


def test_executable_backend_cross_platform_and_explicit_path(tmp_path, monkeypatch):
    exe = _fake(tmp_path / "bin", "my-conda", FAKE_OK)
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("FAKE_ENV", str(tmp_path / "env.txt"))
    backend = conda.make_backend("conda", str(exe))
    backend.create(_request(tmp_path, platform="osx-arm64"))
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("--platform") + 1] == "osx-arm64"


def test_executable_backend_failure_names_package(tmp_path, monkeypatch):
    _fake(tmp_path / "bin", "conda", FAKE_FAIL)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(BuildError, match="package 'nosuchpkg'") as info:
        conda.make_backend("conda").create(_request(tmp_path))
    assert info.value.step == "solve"
    assert "PackagesNotFoundError" in info.value.log_tail


def test_executable_backend_missing_executable(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CONDA_EXE", raising=False)
    with pytest.raises(BuildError, match="micromamba executable 'micromamba' was not found"):
        conda.make_backend("micromamba").create(_request(tmp_path))


def test_unknown_solver():
    with pytest.raises(BuildError, match="unknown solver 'pixi'"):
        conda.make_backend("pixi")


def test_build_env_with_fake_micromamba(tmp_path, monkeypatch):
    """The executable backend plugs into build_env: an (empty) env is created and packed."""
    _fake(tmp_path / "bin", "micromamba", FAKE_OK)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("FAKE_ENV", str(tmp_path / "env.txt"))
    options = BuildOptions(solver="micromamba", cache_dir=tmp_path / "cache",
                           workdir=tmp_path / "work", channels=("conda-forge",))
    out = tmp_path / "env.tar.gz"
    manifest = build_env(Spec(conda=("zlib",)), out, options=options, progress=lambda _: None)
    assert out.exists()
    assert manifest.lock["conda"] == [{"name": "fake", "version": "1.0", "build": "0"}]
    assert "zlib" in (tmp_path / "args").read_text().split()
    assert not any((tmp_path / "work").iterdir())


def test_build_env_local_code_edited_after_analysis_leaves_no_scratch_or_tarball(
        tmp_path, monkeypatch):
    """The code step's BuildError ends the build: scratch dir removed, no tarball."""
    with_python = FAKE_OK.replace('mkdir -p "$2/conda-meta"',
                                  'mkdir -p "$2/lib/python3.11/site-packages" "$2/conda-meta"')
    _fake(tmp_path / "bin", "micromamba", with_python)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("FAKE_ENV", str(tmp_path / "env.txt"))
    module = tmp_path / "src" / "helper.py"
    module.parent.mkdir()
    module.write_text("X = 1\n")
    spec = Spec(conda=("python",), local=(_analysed("helper", module),))
    module.write_text("X = 2\n")
    options = BuildOptions(solver="micromamba", cache_dir=tmp_path / "cache",
                           workdir=tmp_path / "work", channels=("conda-forge",))
    out = tmp_path / "env.tar.gz"
    with pytest.raises(BuildError, match="local module 'helper' .* changed on disk") as info:
        build_env(spec, out, options=options, progress=lambda _: None)
    assert (info.value.step, info.value.package) == ("code", "helper")
    assert not out.exists()
    assert list((tmp_path / "work").iterdir()) == []


# -- pip --------------------------------------------------------------------------------------


def test_hermetic_env_drops_host_configuration(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/xdg/pip/constraints.txt")
    monkeypatch.setenv("UV_INDEX_URL", "https://example.invalid/simple")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("VIRTUAL_ENV", "/venv")
    env = _util.hermetic_env()
    assert not [k for k in env if k.startswith("UV_")]
    assert "PIP_FIND_LINKS" not in env and "PIP_CONSTRAINT" not in env
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert env["PYTHONNOUSERSITE"] == "1"
    if _util.ca_bundle():
        assert env["SSL_CERT_FILE"] == _util.ca_bundle()


def test_uv_command(tmp_path):
    request = pip.PipRequest(
        prefix=tmp_path / "env", requirements=["six==1.17.0", "idna"],
        index_url="https://pypi.example/simple", extra_index_urls=["https://extra/simple"],
        find_links=["/wheels"], cache_dir=tmp_path / "cache",
    )
    cmd = pip.pip_command("uv", "/bin/uv", request, tmp_path / "c.txt")
    assert cmd[:4] == ["/bin/uv", "pip", "install", "--no-config"]
    assert cmd[cmd.index("--python") + 1] == str(tmp_path / "env" / "bin" / "python")
    assert pip.index_env("uv", request) == {"UV_DEFAULT_INDEX": "https://pypi.example/simple",
                                            "UV_INDEX": "https://extra/simple",
                                            "UV_FIND_LINKS": "/wheels"}
    assert cmd[cmd.index("--index-strategy") + 1] == "unsafe-best-match"  # pip's merge
    assert cmd[cmd.index("--constraint") + 1] == str(tmp_path / "c.txt")
    assert cmd[cmd.index("--cache-dir") + 1] == str(tmp_path / "cache" / "uv")
    assert cmd[-2:] == ["six==1.17.0", "idna"]
    assert "--compile-bytecode" in cmd
    request.compile_bytecode = False
    assert "--compile-bytecode" not in pip.pip_command("uv", "/bin/uv", request, None)
    assert "--no-compile" in pip.pip_command("pip", None, request, None)


def test_pip_command_is_hermetic_and_keeps_tls(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://host.example/simple")
    request = pip.PipRequest(prefix=tmp_path / "env", requirements=["six"],
                             index_url="https://u:s3cret@idx.example/simple")
    cmd = pip.pip_command("pip", None, request, None)
    assert cmd[:4] == [str(tmp_path / "env" / "bin" / "python"), "-m", "pip", "install"]
    assert cmd[-2:] == ["--", "six"]
    assert not any("s3cret" in part for part in cmd)  # indexes go by environment, not argv
    env = _util.hermetic_env(pip.index_env("pip", request))
    assert env["PIP_CONFIG_FILE"] == os.devnull  # no config file is read
    assert env["PIP_INDEX_URL"] == "https://u:s3cret@idx.example/simple"  # not the host's
    if _util.ca_bundle():
        assert cmd[cmd.index("--cert") + 1] == _util.ca_bundle()


def test_requirement_that_looks_like_an_option_is_refused(tmp_path):
    (tmp_path / "env" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    request = pip.PipRequest(prefix=tmp_path / "env", requirements=["--index-url=http://evil"])
    with pytest.raises(BuildError, match="looks like an option"):
        pip.install_pip(request, [], scratch=tmp_path)


def test_find_uv_prefers_the_one_beside_python():
    found = pip.find_uv()
    assert found is not None and os.access(found, os.X_OK)


def test_choose_installer():
    assert pip.choose_installer("pip") == ("pip", None)
    assert pip.choose_installer("auto")[0] == "uv"


@pytest.mark.parametrize(
    "log, package",
    [
        ("ERROR: No matching distribution found for nosuch-dist==1.0", "nosuch-dist"),
        ("  × No solution found when resolving dependencies:\n  ╰─▶ Because nosuch-dist was "
         "not found in the package registry and you require nosuch-dist", "nosuch-dist"),
        ("cause: Because there is no version of six==99 and you require six==99", "six"),
    ],
)
def test_pip_error_names_the_package(tmp_path, log, package):
    request = pip.PipRequest(prefix=tmp_path, requirements=["x"])
    err = pip.pip_error(BuildError("f", step="pip", log_tail=log), "uv", request, {})
    assert err.package == package
    assert err.step == "pip" and err.log_tail == log


def test_conda_managed_dists_from_records():
    records = [{"files": ["lib/python3.11/site-packages/pip-23.2.1.dist-info/METADATA",
                          "lib/python3.11/site-packages/pip/__init__.py"]},
               {"files": ["site-packages/Setup_Tools-65.5.0.dist-info/METADATA"]}]
    assert pip.conda_managed_dists(Path("/x"), records) == {"pip": "23.2.1",
                                                            "setup-tools": "65.5.0"}


# -- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "remote, ref, message",
    [
        ("-oProxyCommand=x", "HEAD", "starts with '-'"),
        ("https://h/r.git", "-x", "starts with '-'"),
        ("ext::sh -c id", "HEAD", "transport helper"),
        ("EXT::sh", "HEAD", "transport helper"),
        ("fd::0", "HEAD", "transport helper"),
        ("https://h/r.git", "a..b", "'..'"),
    ],
)
def test_git_source_refused(remote, ref, message):
    with pytest.raises(BuildError, match=message):
        data.check_git_source("V", remote, ref)


@pytest.mark.parametrize("remote", ["https://github.com/o/r.git", "git@github.com:o/r.git",
                                    "/srv/repo", "file:///srv/repo", "ssh://h/r"])
def test_git_source_accepted(remote):
    data.check_git_source("V", remote, "main")


def test_git_command_disables_command_transports():
    cmd = data.git_command("clone", "--", "x", "y")
    assert cmd[:5] == ["git", "-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never"]
    assert "ext" not in data.GIT_ALLOWED_PROTOCOLS.split(":")


@pytest.mark.parametrize("var", ["1ABC", "A-B", "A B", ""])
def test_bad_variable_names(var):
    with pytest.raises(BuildError, match="not a valid environment variable name"):
        data.check_var(var)


def test_http_file_tar_and_gzip_from_file_urls(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.txt").write_text("plain\n")
    (src / "c.gz").write_bytes(gzip.compress(b"unzipped\n"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("d/x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    (src / "t.tgz").write_bytes(buf.getvalue())
    prefix = tmp_path / "env"
    http = {
        "PLAIN": HttpData(url=(src / "plain.txt").as_uri()),
        "GZ": HttpData(url=(src / "c.gz").as_uri(), compression="gzip"),
        "TAR": HttpData(url=(src / "t.tgz").as_uri(), type="tar", compression="gzip"),
    }
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    variables = data.add_data(prefix, {}, http, scratch)
    assert variables == {v: f"share/parsl-poncho/data/{v}" for v in ("GZ", "PLAIN", "TAR")}
    assert (prefix / variables["PLAIN"]).read_text() == "plain\n"
    assert (prefix / variables["GZ"]).read_text() == "unzipped\n"
    assert (prefix / variables["TAR"] / "d" / "x.txt").read_text() == "x\n"
    lines = (prefix / "etc" / "parsl-poncho" / "data.env").read_text().splitlines()
    assert lines == [f"{v}=share/parsl-poncho/data/{v}" for v in ("GZ", "PLAIN", "TAR")]
    assert not any(scratch.iterdir())


def test_http_tar_with_unsafe_member_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "bad.tar").write_bytes(buf.getvalue())
    with pytest.raises(BuildError, match="cannot unpack"):
        data.fetch_http("BAD", HttpData(url=(tmp_path / "bad.tar").as_uri(), type="tar"),
                        tmp_path / "out", tmp_path, None)
    assert not (tmp_path / "escape.txt").exists()


def test_http_unknown_compression_and_scheme(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BuildError, match="unknown compression 'zip'"):
        data.fetch_http("F", HttpData(url=(tmp_path / "f").as_uri(), compression="zip"),
                        tmp_path / "out", tmp_path, None)
    with pytest.raises(BuildError, match="is not http"):
        data.check_url("F", "ftp://example.org/f")


def test_http_download_failure_names_variable(tmp_path):
    with pytest.raises(BuildError, match="http.MISSING: could not download") as info:
        data.download("MISSING", (tmp_path / "nope").as_uri(), tmp_path / "o", None, 5)
    assert info.value.package == "MISSING"


# -- local code -------------------------------------------------------------------------------


def _site(prefix: Path) -> Path:
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / (
        "site-packages")
    site.mkdir(parents=True)
    return site


def _analysed(name: str, path: Path) -> LocalCode:
    """The LocalCode the analysis records for ``path`` (the classifier's content hash)."""
    return LocalCode(name, str(path), Classifier().content_hash(path))


def test_local_code_module_and_package(tmp_path):
    site = _site(tmp_path / "env")
    (tmp_path / "helper.py").write_text("X = 1\n")
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"")
    names = code_mod.add_local_code(tmp_path / "env", [
        _analysed("helper", tmp_path / "helper.py"),
        _analysed("pkg", pkg),
    ])
    assert names == ["helper", "pkg"]
    assert (site / "helper.py").read_text() == "X = 1\n"
    assert (site / "pkg" / "__init__.py").exists()
    assert not (site / "pkg" / "__pycache__").exists()


def test_local_module_edited_after_analysis_fails_and_leaves_nothing(tmp_path):
    site = _site(tmp_path / "env")
    module = tmp_path / "helper.py"
    module.write_text("X = 1\n")
    code = _analysed("helper", module)
    module.write_text("X = 2\n")
    with pytest.raises(BuildError, match=(
            r"local module 'helper' .* changed on disk after it was analysed.*Submit the app "
            r"again .* re-run poncho_package_analyze")) as info:
        code_mod.add_local_code(tmp_path / "env", [code])
    assert (info.value.step, info.value.package) == ("code", "helper")
    assert list(site.iterdir()) == []


def test_local_package_edited_after_analysis_fails_and_leaves_nothing(tmp_path):
    site = _site(tmp_path / "env")
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "core.py").write_text("VALUE = 1\n")
    code = _analysed("pkg", pkg)
    (pkg / "sub" / "new.py").write_text("")  # a file added after the analysis counts too
    with pytest.raises(BuildError, match="local package 'pkg' .* changed on disk") as info:
        code_mod.add_local_code(tmp_path / "env", [code])
    assert (info.value.step, info.value.package) == ("code", "pkg")
    assert list(site.iterdir()) == []


def test_local_package_with_symlinks_ships_what_its_hash_covers(tmp_path):
    site = _site(tmp_path / "env")
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "util.py").write_text("U = 1\n")
    (shared / "data" / "table.csv").write_text("x\n1\n")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "util.py").symlink_to(shared / "util.py")
    (pkg / "data").symlink_to(shared / "data", target_is_directory=True)
    (pkg / "loop").symlink_to(pkg, target_is_directory=True)  # a cycle: skipped
    code = _analysed("pkg", pkg)
    assert code_mod.add_local_code(tmp_path / "env", [code]) == ["pkg"]
    shipped = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert shipped == ["pkg/__init__.py", "pkg/data/table.csv", "pkg/util.py"]
    assert not any(p.is_symlink() for p in site.rglob("*"))
    assert hash_code(site / "pkg") == code.sha256
    # content behind a directory link is shipped, so it is part of the hash
    (shared / "data" / "table.csv").write_text("x\n2\n")
    assert Classifier().content_hash(pkg) != code.sha256


def test_local_code_missing(tmp_path):
    (tmp_path / "env" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    with pytest.raises(BuildError, match="local code 'gone' not found"):
        code_mod.add_local_code(tmp_path / "env", [LocalCode("gone", str(tmp_path / "x"), "0")])


def test_local_code_without_python(tmp_path):
    (tmp_path / "env").mkdir()
    with pytest.raises(BuildError, match="has no Python"):
        code_mod.add_local_code(tmp_path / "env", [LocalCode("m", str(tmp_path), "0")])


# -- subprocess, manifest, progress -----------------------------------------------------------


def test_run_step_failure_keeps_log_tail():
    with pytest.raises(BuildError, match="exit code 3") as info:
        _util.run_step([sys.executable, "-c", "import sys; print('l1\\nl2'); sys.exit(3)"],
                       step="pip", package="p")
    assert info.value.log_tail == "l1\nl2"
    assert info.value.package == "p"


def test_run_step_missing_tool():
    with pytest.raises(BuildError, match="not found"):
        _util.run_step(["/nonexistent/tool"], step="data")


def test_manifest_round_trip(tmp_path):
    manifest = Manifest(spec={"conda": {}}, hash="h", platform="linux-64", tarball="e.tar.gz",
                        size=3, sha256="s", phases={"pack": 1.23456})
    path = write_manifest(manifest, tmp_path / "m.json")
    loaded = json.loads(path.read_text())
    assert loaded["phases"] == {"pack": 1.235}
    assert Manifest.from_dict(loaded).tarball == "e.tar.gz"
    assert stat.S_IMODE(path.stat().st_mode) & 0o444


def test_progress_reports_and_times_phases():
    lines: list[str] = []
    report = progress.Progress(lines.append, phases=2)
    with report.phase("solve", "3 specs"):
        pass
    with pytest.raises(ValueError, match="x"), report.phase("pip"):
        raise ValueError("x")
    assert lines[0] == "[1/2] solve: 3 specs"
    assert lines[1].startswith("[1/2] solve: done in")
    assert set(report.seconds) == {"solve", "pip"}


def test_progress_callback_failure_does_not_break(caplog):
    def broken(line: str) -> None:
        raise RuntimeError("no")

    report = progress.Progress(broken)
    with report.phase("x"):
        pass
    assert "x" in report.seconds


def test_default_progress_logs_when_not_a_tty(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    callback = progress.default_progress()
    with caplog.at_level("INFO", logger="parsl_poncho.build"):
        callback("hello")
    assert "hello" in caplog.text


# -- scratch dirs -----------------------------------------------------------------------------


def test_scratch_dir_removed_and_stale_ones_reaped(tmp_path):
    import subprocess

    from parsl_poncho.build import scratch

    work = tmp_path / "work"
    # a build killed with SIGKILL: its dir and lock file remain, nobody holds the lock
    code = ("import os, signal, sys; from pathlib import Path;"
            "from parsl_poncho.build.scratch import scratch_dir\n"
            "with scratch_dir(Path(sys.argv[1])) as d:\n"
            "    (d / 'env').mkdir(); os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(work)], check=False)
    dead = list(work.glob("build-*"))
    assert len(dead) == 1
    young_unlocked = work / "build-starting"
    young_unlocked.mkdir()
    with scratch.scratch_dir(work) as live:
        assert live.exists() and not dead[0].exists()
        assert young_unlocked.exists()  # may be a build that is just starting
        assert scratch.reap_stale(work) == []  # the live one is locked
    assert not live.exists()
    with scratch.scratch_dir(work, keep=True) as kept:
        pass
    assert kept.exists()


def test_default_progress_prints_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    monkeypatch.setattr(sys, "stderr", stream)
    progress.default_progress()("[1/5] solve: done in 0.10 s")
    assert stream.getvalue() == "parsl-poncho: [1/5] solve: done in 0.10 s\n"


def test_pip_options_from_spec_and_build_options_merge(tmp_path):
    from parsl_poncho.build import _pip_request
    from parsl_poncho.spec import PipOptions

    spec = Spec(conda=("python",), pip=("six",), pip_options=PipOptions(
        index_url="https://spec/simple", extra_index_urls=("https://spec-extra/simple",),
        find_links=("/spec-wheels",)))
    plain = _pip_request(spec, BuildOptions(), tmp_path, tmp_path)
    assert (plain.index_url, plain.extra_index_urls, plain.find_links) == (
        "https://spec/simple", ["https://spec-extra/simple"], ["/spec-wheels"])
    merged = _pip_request(spec, BuildOptions(index_url="https://mirror/simple",
                                             extra_index_urls=("https://x/simple",),
                                             find_links=("/wheels",)), tmp_path, tmp_path)
    assert merged.index_url == "https://mirror/simple"
    assert merged.extra_index_urls == ["https://spec-extra/simple", "https://x/simple"]
    assert merged.find_links == ["/spec-wheels", "/wheels"]
