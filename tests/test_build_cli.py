"""`poncho_package_create`: build from a spec file or stdin, pack an env directory, errors."""

from __future__ import annotations

import io
import json
import sys

import pytest

from parsl_poncho.cli.create import main, manifest_path_for

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def _spec_file(tmp_path, deps):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"conda": {"channels": ["conda-forge"], "dependencies": deps}}))
    return path


@pytest.mark.slow
def test_create_from_spec_file_json_summary(tmp_path, seeded_channel, build_cache_dir, capsys):
    spec = _spec_file(tmp_path, [f"python={PYVER}", "pip", {"pip": ["six"]}])
    out = tmp_path / "env.tar.gz"
    rc = main([str(spec), str(out), "--channel", str(seeded_channel), "--override-channels",
               "--cache-dir", str(build_cache_dir), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["size"] == out.stat().st_size
    assert [p["name"] for p in summary["lock"]["pip"]] == ["six"]
    assert json.loads(manifest_path_for(out).read_text())["sha256"] == summary["sha256"]
    assert captured.err == ""  # --json implies no progress lines


@pytest.mark.slow
def test_create_failure_names_step_and_package(tmp_path, seeded_channel, build_cache_dir,
                                               capsys):
    spec = _spec_file(tmp_path, [f"python={PYVER}", "no-such-pkg-abc"])
    rc = main([str(spec), str(tmp_path / "env.tar.gz"), "-c", str(seeded_channel),
               "--override-channels", "--cache-dir", str(build_cache_dir), "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "[step=solve, package=no-such-pkg-abc]" in err
    assert "log tail" in err
    assert not (tmp_path / "env.tar.gz").exists()


@pytest.mark.slow
def test_pack_an_existing_env_directory(tmp_path, seeded_channel, build_cache_dir, capsys):
    from parsl_poncho.build.conda import CondaRequest, RattlerBackend, host_platform

    env = tmp_path / "existing-env"
    RattlerBackend().create(CondaRequest(
        prefix=env, specs=[f"python={PYVER}"], channels=[seeded_channel.as_uri()],
        platform=host_platform(), cache_dir=build_cache_dir / "conda"))
    out = tmp_path / "packed.tar.gz"
    assert main([str(env), str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "python" in [c["name"] for c in summary["lock"]["conda"]]
    assert out.stat().st_size == summary["size"]


def test_stdin_that_is_not_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("{nope"))
    assert main(["-", str(tmp_path / "o.tar.gz")]) == 1
    assert "stdin is not a JSON spec" in capsys.readouterr().err


def test_invalid_spec_is_reported(tmp_path, capsys):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"conda": {"dependencies": ["numpy=>1"]}}))
    assert main([str(spec), str(tmp_path / "o.tar.gz")]) == 1
    assert "numpy=>1" in capsys.readouterr().err
    assert not (tmp_path / "o.tar.gz").exists()


def test_directory_that_is_not_an_env(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "o.tar.gz")]) == 1
    assert "not a conda environment" in capsys.readouterr().err


def test_env_name_without_conda(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CONDA_EXE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["myenv", str(tmp_path / "o.tar.gz")]) == 1
    assert "no conda is installed" in capsys.readouterr().err


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit, match="2"):
        main(["only-one-arg"])


@pytest.mark.parametrize("name, expected", [("env.tar.gz", "env.json"), ("e.tgz", "e.json"),
                                            ("e.bin", "e.bin.json")])
def test_manifest_path_for(tmp_path, name, expected):
    assert manifest_path_for(tmp_path / name) == tmp_path / expected


@pytest.mark.slow
def test_create_follows_pip_config_unless_hermetic(tmp_path, seeded_channel, build_cache_dir,
                                                   capsys, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))  # read by `pip config list`
    spec = _spec_file(tmp_path, [f"python={PYVER}", "pip", {"pip": ["six==1.17.0"]}])
    common = ["--channel", str(seeded_channel), "--override-channels",
              "--cache-dir", str(build_cache_dir), "-q"]
    out = tmp_path / "env.tar.gz"
    assert main([str(spec), str(out), *common]) == 0, capsys.readouterr().err
    options = json.loads(manifest_path_for(out).read_text())["spec"]
    assert str(wheels) in json.dumps(options)  # the configuration is in the spec (and hash)

    labelled = _spec_file(tmp_path, [f"python={PYVER}", "pip", {"pip": ["six==1.17.0+cpu"]}])
    rc = main([str(labelled), str(tmp_path / "x.tar.gz"), *common, "--hermetic"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "local version label +cpu" in err and "--extra-index-url URL" in err
    assert "this build is: PipSources.hermetic() or --hermetic" in err
    assert str(wheels) not in err  # hermetic: the configuration was not looked at
