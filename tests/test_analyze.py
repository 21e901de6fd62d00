"""Tests for parsl_poncho.analyze: the corpus (plain venv and a conda prefix), pinning, memo."""

from __future__ import annotations

import gc
import importlib
import importlib.metadata as metadata
import json
import os
import sys
import weakref
from pathlib import Path

import cloudpickle
import pytest
from rattler import PrefixRecord

from parsl_poncho.analyze import Analyzer, analyze, find_modules, strip_parsl_wrapper
from parsl_poncho.analyze import memo as memo_mod
from parsl_poncho.analyze.classify import Classifier, normalize_channel, normalize_name
from parsl_poncho.analyze.pin import python_version
from parsl_poncho.codehash import hash_code
from parsl_poncho.spec import Spec

CORPUS = Path(__file__).parent / "analyze_corpus"
if str(CORPUS) not in sys.path:
    sys.path.insert(0, str(CORPUS))

import corpus_patterns  # noqa: E402

CASES = {c.name: c for c in corpus_patterns.CASES}
CONDA_DISTS = ("numpy", "scipy", "pandas", "scikit-learn")


@pytest.fixture(autouse=True, scope="module")
def corpus_by_value():
    """Corpus functions travel by value, like the functions of a __main__ script."""
    cloudpickle.register_pickle_by_value(corpus_patterns)
    yield
    cloudpickle.unregister_pickle_by_value(corpus_patterns)


@pytest.fixture(scope="module")
def venv_analyzer() -> Analyzer:
    return Analyzer()


def _write_record(meta: Path, dist_name: str, channel: str) -> None:
    dist = metadata.distribution(dist_name)
    name = normalize_name(dist.metadata["Name"])
    files = [f"lib/python3.11/site-packages/{f.as_posix()}" for f in dist.files or ()]
    depends = ["python >=3.11,<3.12.0a0", "__glibc >=2.17"]
    depends += [r.split(";")[0].split()[0].split(">")[0].split("=")[0].split("<")[0]
                for r in dist.requires or () if "extra ==" not in r]
    fn = f"{name}-{dist.version}-py311_test_0.conda"
    record = {
        "name": name, "version": dist.version, "build": "py311_test_0", "build_number": 0,
        "channel": channel, "depends": depends, "files": files, "subdir": "linux-64",
        "fn": fn, "url": f"{channel}/{fn}", "paths_data": {"paths_version": 1, "paths": []},
    }
    draft = meta.parent / f"{name}.draft.json"
    draft.write_text(json.dumps(record))
    # Parsed and written by py-rattler: the records are what rattler installs write.
    PrefixRecord.from_path(draft).write_to_path(
        meta / f"{name}-{dist.version}-py311_test_0.json", pretty=True)
    draft.unlink()


@pytest.fixture(scope="module")
def conda_prefix(tmp_path_factory) -> Path:
    """A prefix whose conda-meta records say numpy, scipy, pandas, scikit-learn are conda's."""
    prefix = tmp_path_factory.mktemp("conda-prefix")
    meta = prefix / "conda-meta"
    meta.mkdir()
    for name in CONDA_DISTS:
        _write_record(meta, name, "https://conda.anaconda.org/conda-forge/linux-64")
    _write_record(meta, "threadpoolctl", "file:///opt/local-channel")
    (meta / "history").write_text("")
    return prefix


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_in_venv(name, venv_analyzer):
    case = CASES[name]
    req = venv_analyzer.requirements(case.func, *case.args, **case.kwargs)
    assert {d.name for d in req.distributions} == set(case.dists), req.modules
    assert {c.name for c in req.local} == set(case.local)
    assert all(d.source == "pip" for d in req.distributions)
    spec = venv_analyzer.analyze(case.func, *case.args, **case.kwargs)
    assert spec.conda[:2] == (f"python={python_version()}", "pip")
    pinned = {p.split("==")[0] for p in spec.pip}
    assert set(case.dists) | {"cloudpickle"} <= pinned
    assert "parsl" not in pinned
    for code in spec.local:
        assert Path(code.path).exists() and len(code.sha256) == 64
    assert Spec.from_dict(spec.to_dict()).hash() == spec.hash()  # a valid, stable spec


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_against_conda_prefix(name, conda_prefix):
    case = CASES[name]
    analyzer = Analyzer(conda_prefix=conda_prefix)
    req = analyzer.requirements(case.func, *case.args, **case.kwargs)
    assert {d.name for d in req.distributions} == set(case.dists)
    assert {c.name for c in req.local} == set(case.local)
    for dist in req.distributions:
        assert dist.source == ("conda" if dist.name in CONDA_DISTS else "pip")
    spec = analyzer.analyze(case.func, *case.args, **case.kwargs)
    for dist in case.dists:
        version = metadata.version(dist)
        assert f"{dist}={version}=py311_test_0" in spec.conda
        assert not any(p.startswith(f"{dist}==") for p in spec.pip)
    assert Spec.from_dict(spec.to_dict()).hash() == spec.hash()
    assert spec.channels[0] == "conda-forge"
    assert set(spec.channels) <= {"conda-forge", "file:///opt/local-channel"}


def test_corpus_size_and_patterns():
    assert len(CASES) >= 30
    assert {c.name for c in corpus_patterns.CASES} == set(CASES)  # names are unique


def test_conda_transitive_deps_and_channels(conda_prefix):
    spec = Analyzer(conda_prefix=conda_prefix).analyze(CASES["global_class_from_distribution"].func)
    tpc = metadata.version("threadpoolctl")
    assert f"threadpoolctl={tpc}=py311_test_0" in spec.conda  # a conda dep of scikit-learn
    assert spec.channels == ("conda-forge", "file:///opt/local-channel")
    assert f"joblib=={metadata.version('joblib')}" in spec.pip  # pip-only dep of a conda pkg
    assert not any(c.startswith(("python=3", "__glibc")) and "test" in c for c in spec.conda)


def test_normalize_channel():
    assert normalize_channel("https://conda.anaconda.org/conda-forge/linux-64") == "conda-forge"
    assert normalize_channel("https://conda.anaconda.org/bioconda/noarch/") == "bioconda"
    assert normalize_channel("file:///srv/chan/linux-64") == "file:///srv/chan"
    assert normalize_channel(None) is None


def test_spec_always_has_python_pip_cloudpickle():
    spec = analyze(lambda: 1)
    assert spec.conda == (f"python={python_version()}", "pip")
    assert spec.pip == (f"cloudpickle=={cloudpickle.__version__}",)
    assert spec.channels == ("conda-forge",)
    assert spec.to_dict()["conda"]["dependencies"][0].startswith("python=")


def test_transitive_pins_by_default_and_off():
    func = CASES["global_dataframe"].func
    full = {p.split("==")[0] for p in Analyzer().analyze(func).pip}
    assert {"pandas", "numpy", "python-dateutil", "cloudpickle"} <= full
    direct = {p.split("==")[0] for p in Analyzer(pin_transitive=False).analyze(func).pip}
    assert direct == {"pandas", "cloudpickle"}


def test_pip_versions_come_from_installed_metadata():
    spec = Analyzer(pin_transitive=False).analyze(CASES["global_class_from_distribution"].func)
    assert f"scikit-learn=={metadata.version('scikit-learn')}" in spec.pip


def test_optional_missing_import_is_skipped():
    req = Analyzer().requirements(CASES["optional_import_guarded"].func)
    assert req.skipped == ("not_a_real_module_for_poncho",)


def test_requirements_record_where_each_module_is_used():
    req = Analyzer().requirements(CASES["calls_helper"].func)
    use = req.modules["scipy"] if "scipy" in req.modules else req.modules["scipy.special"]
    assert "_helper_scipy" in use.where and "corpus_patterns.py:" in use.where
    assert req.providers[use.module] == "scipy"


def test_find_modules_layer_includes_stdlib():
    import json as json_module

    assert "json" in find_modules(lambda: json_module.dumps(1))


# -- Parsl apps ------------------------------------------------------------------------------
def test_bash_app_callable_needs_parsl():
    from parsl.app.app import bash_app

    @bash_app
    def echo(x):
        return f"echo {x}"

    submitted = echo.wrapped_remote_function  # what BashApp.__call__ hands the DFK
    spec = Analyzer(pin_transitive=False).analyze(submitted, 1)
    assert f"parsl=={metadata.version('parsl')}" in spec.pip


def test_python_app_in_main_needs_no_parsl(tmp_path):
    import subprocess

    script = tmp_path / "flow.py"
    script.write_text(
        "import json, numpy\n"
        "from parsl import python_app\n"
        "from parsl_poncho.analyze import Analyzer\n"
        "@python_app\n"
        "def app(x):\n"
        "    return numpy.zeros(x)\n"
        "if __name__ == '__main__':\n"
        "    spec = Analyzer(pin_transitive=False).analyze(app.func, 3)\n"
        "    print(json.dumps(list(spec.pip)))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, timeout=120)
    pip = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(p.startswith("numpy==") for p in pip)
    assert not any(p.startswith("parsl==") for p in pip)


def test_strip_parsl_wrapper_only_strips_wrap_error():
    from parsl.app.errors import wrap_error

    def inner():
        return 1

    assert strip_parsl_wrapper(wrap_error(inner)) is inner
    assert strip_parsl_wrapper(inner) is inner
    assert "parsl" in {d.name for d in Analyzer(strip_parsl=False).requirements(
        wrap_error(inner)).distributions}


# -- local code --------------------------------------------------------------------------------
def test_module_level_function_of_a_test_module_ships_the_module():
    req = Analyzer().requirements(test_normalize_channel)  # pickled by reference
    assert __name__.split(".")[0] in {c.name for c in req.local}
    assert "pytest" in {d.name for d in req.distributions}  # what importing this module needs


def test_editable_install_is_local():
    found = Classifier().classify("parsl_poncho.spec")
    assert found.kind == "local" and found.local is not None
    assert found.local.name == "parsl_poncho" and found.local.path.endswith("parsl_poncho")


def _load_local(tmp_path, monkeypatch, name, text):
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return __import__(name)


def test_local_code_hash_follows_content(tmp_path, monkeypatch):
    mod = _load_local(tmp_path, monkeypatch, "poncho_local_a", "import numpy\nX = 1\n")
    holder = {"m": mod}
    first = Analyzer().analyze(lambda: holder["m"].X)
    (tmp_path / "poncho_local_a.py").write_text("import numpy\nX = 2\n")
    second = Analyzer().analyze(lambda: holder["m"].X)
    assert [c.name for c in first.local] == ["poncho_local_a"]
    assert first.local[0].sha256 != second.local[0].sha256
    assert any(p.startswith("numpy==") for p in first.pip)


def test_local_package_hash_skips_pycache(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    classifier = Classifier()
    before = classifier.content_hash(pkg)
    (pkg / "__pycache__" / "junk.cpython-311.pyc").write_bytes(b"\0" * 10)
    assert Classifier().content_hash(pkg) == before
    (pkg / "mod.py").write_text("y = 2\n")
    assert Classifier().content_hash(pkg) != before


# -- memoisation ---------------------------------------------------------------------------------
def _edit(path: Path, text: str) -> None:
    """Rewrite ``path`` with a later mtime (a quick edit may otherwise keep the old one)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_memo_notices_an_edited_local_module(tmp_path, monkeypatch):
    monkeypatch.setattr(memo_mod, "LOCAL_RECHECK_SECONDS", 0.0)
    mod = _load_local(tmp_path, monkeypatch, "poncho_local_memo",
                      "def app():\n    return X\n\nX = 1\n")
    analyzer = Analyzer()
    first = analyzer.analyze(mod.app)
    assert [c.name for c in first.local] == ["poncho_local_memo"]
    assert analyzer.analyze(mod.app) is first  # files looked at again, unchanged: memo hit
    _edit(tmp_path / "poncho_local_memo.py", "def app():\n    return X\n\nX = 2\n")
    second = analyzer.analyze(mod.app)  # not reloaded: the same function object
    assert second.local[0].sha256 != first.local[0].sha256
    assert second.local[0].sha256 == hash_code(tmp_path / "poncho_local_memo.py")
    assert second.hash() != first.hash()
    assert analyzer.analyze(mod.app) is second
    reloaded = importlib.reload(mod)
    assert analyzer.analyze(reloaded.app).local == second.local


def test_memo_looks_at_local_files_at_most_once_per_recheck_time(tmp_path, monkeypatch):
    monkeypatch.setattr(memo_mod, "LOCAL_RECHECK_SECONDS", 3600.0)
    mod = _load_local(tmp_path, monkeypatch, "poncho_local_throttle",
                      "def app():\n    return X\n\nX = 1\n")
    analyzer = Analyzer()
    first = analyzer.analyze(mod.app)
    _edit(tmp_path / "poncho_local_throttle.py", "def app():\n    return X\n\nX = 2\n")
    assert analyzer.analyze(mod.app) is first  # within the recheck time: no stat at all
    monkeypatch.setattr(memo_mod, "LOCAL_RECHECK_SECONDS", 0.0)
    assert analyzer.analyze(mod.app).local[0].sha256 != first.local[0].sha256


def test_memo_by_argument_types_notices_edited_local_code(tmp_path, monkeypatch):
    monkeypatch.setattr(memo_mod, "LOCAL_RECHECK_SECONDS", 0.0)
    mod = _load_local(tmp_path, monkeypatch, "poncho_local_argtype",
                      "class Point:\n    x = 1\n")
    namespace: dict = {}
    exec("def app(p):\n    return p.x\n", namespace)
    analyzer = Analyzer()
    point = mod.Point()
    assert analyzer.analyze(namespace["app"]).local == ()
    first = analyzer.analyze(namespace["app"], point)
    assert [c.name for c in first.local] == ["poncho_local_argtype"]
    assert analyzer.analyze(namespace["app"], point) is first
    _edit(tmp_path / "poncho_local_argtype.py", "class Point:\n    x = 2\n")
    second = analyzer.analyze(namespace["app"], point)
    assert second.local[0].sha256 == hash_code(tmp_path / "poncho_local_argtype.py")
    assert second.local[0].sha256 != first.local[0].sha256


def test_memoised_result_is_reused():
    analyzer = Analyzer()
    func = CASES["mixed_numpy_scipy_pandas"].func
    first = analyzer.analyze(func)
    assert analyzer.analyze(func) is first
    assert analyzer.requirements(func) is analyzer.requirements(func)


def test_memo_sees_rebound_globals_and_closures():
    namespace: dict = {}
    exec("import numpy as lib\ndef f():\n    return lib.zeros(1)\n", namespace)
    analyzer = Analyzer(pin_transitive=False)
    assert any(p.startswith("numpy==") for p in analyzer.analyze(namespace["f"]).pip)
    import pandas

    namespace["lib"] = pandas
    assert any(p.startswith("pandas==") for p in analyzer.analyze(namespace["f"]).pip)

    def make():
        import numpy as thing

        def g():
            return thing

        def rebind(value):
            nonlocal thing
            thing = value

        return g, rebind

    g, rebind = make()
    assert any(p.startswith("numpy==") for p in analyzer.analyze(g).pip)
    import scipy

    rebind(scipy)
    assert any(p.startswith("scipy==") for p in analyzer.analyze(g).pip)


def test_memo_keeps_nothing_alive():
    analyzer = Analyzer()
    namespace: dict = {}
    exec("def make():\n    import numpy\n    def rec(n):\n"
         "        return numpy.zeros(n) if n else rec(n - 1)\n    return rec\n", namespace)
    func = namespace.pop("make")()  # a recursive closure: its cell holds the function itself
    analyzer.analyze(func)
    refs = [weakref.ref(func), weakref.ref(func.__code__)]
    assert len(analyzer._memo) == 1 and len(analyzer._by_code) == 1
    del func, namespace
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert len(analyzer._memo) == 0 and len(analyzer._by_code) == 0


def test_argument_types_are_memoised_per_type():
    import pandas

    analyzer = Analyzer(pin_transitive=False)
    func = CASES["argument_dataframe"].func
    a = analyzer.analyze(func, pandas.DataFrame({"a": [1]}))
    b = analyzer.analyze(func, pandas.DataFrame({"b": [2]}))
    assert a is b and any(p.startswith("pandas==") for p in a.pip)
    assert not any(p.startswith("pandas==") for p in analyzer.analyze(func, 3).pip)


def test_new_function_objects_from_the_same_code_reuse_the_analysis():
    import numpy

    def factory(value):
        def inner():
            return numpy.asarray(value)

        return inner

    analyzer = Analyzer()
    first = analyzer.analyze(factory(1))
    assert analyzer.analyze(factory(2)) is first  # atomic cell values: same needs
    import pandas

    other = analyzer.analyze(factory(pandas.DataFrame()))  # a weak-referenceable new value
    assert other is not first and any(p.startswith("pandas==") for p in other.pip)
    assert analyzer.analyze(factory([pandas.DataFrame()])) is not first  # containers: re-walk


def test_parsl_walltime_wrapper_needs_parsl():
    from parsl.app.python import timeout

    def task():
        return 1

    spec = Analyzer(pin_transitive=False).analyze(timeout(task, 5))
    assert f"parsl=={metadata.version('parsl')}" in spec.pip


def test_odd_objects_do_not_break_the_walk():
    class _Hostile:  # local: a module-level class would ship this test module
        def __getattribute__(self, name):
            raise RuntimeError(f"no {name}")

    import enum
    import threading

    import numpy

    class Color(enum.Enum):
        RED = 1

    class Slotted:
        __slots__ = ("a",)

        def __init__(self):
            self.a = numpy.float32(1)

    loop: list = [1]
    loop.append(loop)

    slotted, hostile, lock = Slotted(), _Hostile(), threading.Lock()

    def task(c=Color.RED, s=slotted, h=hostile, lock=lock, loop=loop):
        return c, s, h, lock, loop

    req = Analyzer().requirements(task, iter([1]), (x for x in ()))
    assert {d.name for d in req.distributions} == {"numpy"}, {
        k: v.where for k, v in req.modules.items()}
    assert {d.name for d in Analyzer().requirements(print).distributions} == set()


def test_concurrent_analyses_agree():
    from concurrent.futures import ThreadPoolExecutor

    analyzer = Analyzer()
    funcs = [CASES[n].func for n in ("mixed_numpy_scipy_pandas", "local_package_function",
                                     "uses_local_class", "calls_helper_transitively")] * 8
    with ThreadPoolExecutor(8) as pool:
        specs = list(pool.map(analyzer.analyze, funcs))
    for func, spec in zip(funcs, specs):
        assert spec == analyzer.analyze(func)


def test_container_subclasses_need_their_class():
    from sklearn.utils import Bunch

    bunch = Bunch(a=1)  # a dict subclass from scikit-learn
    req = Analyzer().requirements(lambda b: b, bunch)
    assert {d.name for d in req.distributions} == {"scikit-learn"}
