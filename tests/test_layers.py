"""Tests of parsl_poncho.layers (keys, code-layer build and cache) and the layered ReadyEnvs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from parsl_poncho.codehash import hash_code
from parsl_poncho.envs import ReadyEnvs
from parsl_poncho.errors import BuildError, StoreError
from parsl_poncho.layers import (
    CodeLayers,
    code_key,
    combined_hash,
    python_of,
    split_spec,
)
from parsl_poncho.spec import LocalCode, Spec
from parsl_poncho.store import EnvStore


def _local(path: Path) -> LocalCode:
    return LocalCode(name=path.stem if path.is_file() else path.name, path=str(path),
                     sha256=hash_code(path))


@pytest.fixture()
def code(tmp_path: Path) -> tuple[LocalCode, LocalCode]:
    src = tmp_path / "src"
    (src / "mypkg" / "sub").mkdir(parents=True)
    (src / "helper.py").write_text("FACTOR = 1\n")
    (src / "mypkg" / "__init__.py").write_text("from .sub.core import VALUE\n")
    (src / "mypkg" / "sub" / "__init__.py").write_text("")
    (src / "mypkg" / "sub" / "core.py").write_text("VALUE = 'pkg'\n")
    return _local(src / "helper.py"), _local(src / "mypkg")


def _spec(*local: LocalCode, pip: tuple[str, ...] = ("numpy==2.1.0",)) -> Spec:
    return Spec(channels=("conda-forge",), conda=("python=3.11.9", "pip"), pip=pip, local=local)


# -- keys -------------------------------------------------------------------------------------
def test_split_spec_drops_only_the_local_code(code):
    spec = _spec(*code)
    base, local = split_spec(spec)
    assert local == code and base.local == ()
    assert (base.conda, base.pip, base.channels) == (spec.conda, spec.pip, spec.channels)
    plain = _spec()
    assert split_spec(plain) == (plain, ())


@pytest.mark.parametrize(("conda", "expected"), [
    (("python=3.11.9",), "3.11"), (("python==3.12",), "3.12"), (("python 3.10.*",), "3.10"),
    (("pip", "python-dateutil=2.9"), f"{sys.version_info[0]}.{sys.version_info[1]}"),
])
def test_python_of_reads_the_pin(conda, expected):
    assert python_of(Spec(conda=conda)) == expected


def test_code_key_follows_content_and_python_not_path(code, tmp_path: Path):
    helper, pkg = code
    key = code_key([helper, pkg], "3.11")
    assert key == code_key([pkg, helper], "3.11")
    moved = LocalCode(helper.name, str(tmp_path / "elsewhere.py"), helper.sha256)
    assert code_key([moved, pkg], "3.11") == key
    assert code_key([helper, pkg], "3.12") != key
    edited = LocalCode(helper.name, helper.path, "0" * 64)
    assert code_key([edited, pkg], "3.11") != key


def test_combined_hash_is_the_base_hash_without_code():
    base = "a" * 64
    assert combined_hash(base, None) == base
    both = combined_hash(base, "b" * 64)
    assert len(both) == 64 and both not in (base, "b" * 64)
    assert combined_hash(base, "c" * 64) != both


# -- the code-layer cache ---------------------------------------------------------------------
def test_code_layer_is_small_fast_importable_and_cached(code, tmp_path: Path):
    layers = CodeLayers(tmp_path / "cache")
    start = time.perf_counter()
    layer = layers.get(code, "3.11")
    assert time.perf_counter() - start < 2  # ~0.05 s quiet; the margin is for a loaded CI
    assert layers.builds == 1 and layer.names == ("helper", "mypkg")
    assert layer.tarball.name == f"code-{layer.key}.tar.gz" and layer.size < 4096
    with tarfile.open(layer.tarball) as tar:
        names = sorted(tar.getnames())
        assert all(m.uid == 0 and m.mtime == 946684800 for m in tar.getmembers())
    assert names == ["helper.py", "mypkg", "mypkg/__init__.py", "mypkg/sub",
                     "mypkg/sub/__init__.py", "mypkg/sub/core.py"]
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(layer.tarball) as tar:
        tar.extractall(out, filter="data")
    probe = subprocess.run([sys.executable, "-c", "import helper, mypkg; print(helper.FACTOR, "
                            "mypkg.VALUE)"], env={**os.environ, "PYTHONPATH": str(out)},
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["1", "pkg"]
    # hits: in this object and in a new one on the same cache; nothing half written left
    assert layers.get(code, "3.11") == layer and layers.builds == 1
    again = CodeLayers(tmp_path / "cache")
    assert again.get(code, "3.11") == layer and again.builds == 0
    assert sorted(p.name for p in (tmp_path / "cache" / "code").iterdir()) == sorted(
        [layer.tarball.name, f"{layer.key}.json", f"{layer.key}.last-used"])


def test_same_code_packs_to_the_same_bytes(code, tmp_path: Path):
    first = CodeLayers(tmp_path / "a").get(code, "3.11")
    os.utime(code[0].path, (1, 1))  # times do not matter, only content
    second = CodeLayers(tmp_path / "b").get(code, "3.11")
    assert first.sha256 == second.sha256 and first.key == second.key


def test_code_edited_after_analysis_fails_and_publishes_nothing(code, tmp_path: Path):
    helper, _pkg = code
    Path(helper.path).write_text("FACTOR = 2\n")
    layers = CodeLayers(tmp_path / "cache")
    with pytest.raises(BuildError, match="changed on disk after it was analysed"):
        layers.get([helper], "3.11")
    assert list((tmp_path / "cache" / "code").iterdir()) == []


def test_missing_source_names_it(tmp_path: Path):
    gone = LocalCode("gone", str(tmp_path / "gone.py"), "0" * 64)
    with pytest.raises(BuildError, match="local code 'gone' not found"):
        CodeLayers(tmp_path / "cache").get([gone], "3.11")


def test_remove_prune_and_in_use(code, tmp_path: Path):
    layers = CodeLayers(tmp_path / "cache")
    a = layers.get([code[0]], "3.11")
    b = layers.get([code[1]], "3.11")
    assert [c.key for c in layers.entries()] == [a.key, b.key]
    with layers.use(b.key):
        assert layers.in_use(b.key) and not layers.in_use(a.key)
        with pytest.raises(StoreError, match="in use by a running process"):
            layers.remove(b.key)
        assert layers.prune(0) == [a.key]
    assert [c.key for c in layers.entries()] == [b.key]
    assert layers.remove(b.key) and not layers.remove(b.key)
    assert layers.lookup(b.key) is None
    with pytest.raises(StoreError, match="not a code-layer key"):
        layers.remove("nope")
    with pytest.raises(StoreError, match="is not in"):
        with layers.use(a.key):
            pass


# -- ReadyEnvs: a shared base, one code layer per code version --------------------------------
class CountingBuilder:
    """A store builder writing a tiny tarball; counts builds."""

    def __init__(self) -> None:
        self.specs: list[Spec] = []

    def __call__(self, spec: Spec, output: Path, **_: object) -> dict:
        self.specs.append(spec)
        with tarfile.open(output, "w:gz") as tar:
            info = tarfile.TarInfo("bin")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        return {"spec": spec.to_dict()}


def test_apps_with_equal_packages_share_one_base(code, tmp_path: Path):
    builder = CountingBuilder()
    store = EnvStore(tmp_path / "cache", builder=builder)
    envs = ReadyEnvs(store, verify=False, poncho_run=Path("unused"), unpack_dir=tmp_path / "u")
    try:
        helper, pkg = code
        specs = [_spec(helper), _spec(pkg), _spec()]
        got = [envs.get(s, envs.key(s), {}).result(timeout=30) for s in specs]
    finally:
        envs.close()
        store.close()
    assert len(builder.specs) == 1 and builder.specs[0].local == ()
    assert len({e.base.hash for e in got}) == 1
    assert len({e.hash for e in got}) == 3
    plain = got[2]
    assert plain.code is None and plain.hash == plain.base.hash == store.key(specs[2])
    for env, spec in zip(got[:2], specs[:2]):
        assert env.hash == envs.key(spec) == combined_hash(env.base.hash, env.code.key)
        assert env.manifest["layers"] == {
            "base": env.base.hash, "code": env.code.key, "code_sha256": env.code.sha256,
            "code_names": list(env.code.names)}
        assert env.size == env.base.size + env.code.size
        assert env.describe() == f"{env.hash} (base {env.base.hash}, code {env.code.key})"
    assert got[0].code.names == ("helper",) and got[1].code.names == ("mypkg",)


def test_a_failed_code_layer_fails_its_tasks_and_is_retried(code, tmp_path: Path):
    store = EnvStore(tmp_path / "cache", builder=CountingBuilder())
    envs = ReadyEnvs(store, verify=False, poncho_run=Path("unused"), unpack_dir=tmp_path / "u")
    try:
        helper = code[0]
        source = Path(helper.path)
        good = source.read_text()
        source.write_text("broken = (\n")  # edited after the analysis
        spec = _spec(helper)
        with pytest.raises(BuildError, match="changed on disk"):
            envs.get(spec, envs.key(spec), {}).result(timeout=30)
        source.write_text(good)
        deadline = time.monotonic() + 10
        while True:  # the failed future is forgotten by its done-callback
            try:
                env = envs.get(spec, envs.key(spec), {}).result(timeout=30)
                break
            except BuildError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert env.code is not None and env.code.names == ("helper",)
    finally:
        envs.close()
        store.close()


def test_cache_cli_lists_removes_and_prunes_code_layers(code, tmp_path: Path, capsys):
    from parsl_poncho.cli.main import main as poncho_main

    cache = tmp_path / "cache"
    store = EnvStore(cache, builder=CountingBuilder())
    env = store.get(_spec()).result(timeout=30)
    store.close()
    layers = CodeLayers(cache)
    a, b = layers.get([code[0]], "3.11"), layers.get([code[1]], "3.11")
    assert poncho_main(["cache", "--cache-dir", str(cache), "ls"]) == 0
    out = capsys.readouterr().out
    assert env.hash[:16] in out and "code layer: helper" in out and "code layer: mypkg" in out
    assert "3 entries" in out
    assert poncho_main(["cache", "--cache-dir", str(cache), "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["hash"]) for r in rows] == [("env", env.hash), ("code", a.key),
                                                      ("code", b.key)]
    assert poncho_main(["cache", "--cache-dir", str(cache), "rm", a.key[:12]]) == 0
    assert f"removed {a.key}" in capsys.readouterr().out and layers.lookup(a.key) is None
    assert poncho_main(["cache", "--cache-dir", str(cache), "prune", "--max-size", "0"]) == 0
    assert "2 evicted" in capsys.readouterr().out
    assert layers.entries() == [] and EnvStore(cache).entries() == []
