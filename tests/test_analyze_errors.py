"""Tests for analysis errors: unresolvable imports and bad overrides, and the overrides working."""

from __future__ import annotations

import importlib.metadata as metadata
import sys

import pytest

from parsl_poncho.analyze import Analyzer
from parsl_poncho.errors import (
    AnalysisError,
    AnalysisOptionError,
    PonchoError,
    UnresolvedImportError,
)


def _function(source: str, name: str = "task", filename: str = "/work/flow.py"):
    namespace: dict = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


@pytest.fixture
def orphan_module(tmp_path, monkeypatch):
    """A module in a site-packages dir that no distribution's metadata lists."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "orphan_poncho_mod.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "orphan_poncho_mod", raising=False)
    __import__("orphan_poncho_mod")
    from parsl_poncho.analyze import classify

    classify._site_dirs.cache_clear()
    yield "orphan_poncho_mod"
    classify._site_dirs.cache_clear()


def test_unresolvable_import_names_module_function_place_and_fix(orphan_module):
    task = _function("def task():\n    import json\n    import orphan_poncho_mod\n")
    with pytest.raises(UnresolvedImportError, match=r"'orphan_poncho_mod'.*task \(/work/flow.py:3\)"
                       r".*pkg_mapping=\{'orphan_poncho_mod': 'DISTRIBUTION'\}") as info:
        Analyzer().analyze(task)
    assert info.value.module == "orphan_poncho_mod"
    assert info.value.function == "__main__.task"
    assert "site-packages but no installed distribution" in str(info.value)
    assert isinstance(info.value, PonchoError)


def test_unresolvable_global_module_is_reported_too(orphan_module):
    task = _function("import orphan_poncho_mod as om\ndef task():\n    return om.VALUE\n")
    with pytest.raises(UnresolvedImportError, match=r"orphan_poncho_mod.*/work/flow.py:3"):
        Analyzer().analyze(task)


def test_pkg_mapping_resolves_it(orphan_module):
    task = _function("def task():\n    import orphan_poncho_mod\n")
    spec = Analyzer(pkg_mapping={"orphan_poncho_mod": "numpy"}, pin_transitive=False).analyze(task)
    assert f"numpy=={metadata.version('numpy')}" in spec.pip
    req = Analyzer(pkg_mapping={"orphan_poncho_mod": "numpy"}).requirements(task)
    assert req.providers["orphan_poncho_mod"] == "numpy"


def test_ignore_leaves_it_out(orphan_module):
    task = _function("def task():\n    import orphan_poncho_mod.sub\n")
    req = Analyzer(ignore=["orphan_poncho_mod"]).requirements(task)
    assert req.modules == {} and req.distributions == ()


def test_missing_module_is_an_error_unless_guarded():
    task = _function("def task():\n    import no_such_module_poncho_xyz\n")
    with pytest.raises(UnresolvedImportError, match=r"no_such_module_poncho_xyz.*not installed "
                                                    r"on this host.*--pkg-mapping"):
        Analyzer().analyze(task)
    guarded = _function("def task():\n    try:\n        import no_such_module_poncho_xyz\n"
                        "    except ImportError:\n        pass\n")
    assert Analyzer().requirements(guarded).skipped == ("no_such_module_poncho_xyz",)


def test_mapping_to_a_pinned_requirement_passes_through():
    task = _function("def task():\n    import no_such_module_poncho_xyz\n")
    spec = Analyzer(pkg_mapping={"no_such_module_poncho_xyz": "poncho-xyz==1.2"}).analyze(task)
    assert "poncho-xyz==1.2" in spec.pip


def test_relative_import_outside_a_package():
    task = _function("def task():\n    from . import sibling\n")
    with pytest.raises(UnresolvedImportError, match=r"relative import of '.sibling' in "
                       r"task \(/work/flow.py:2\).*Use an absolute import"):
        Analyzer().analyze(task)


def test_pkg_mapping_to_a_distribution_not_installed():
    with pytest.raises(AnalysisOptionError, match=r"pkg_mapping maps 'cv2' to 'opencv-python', "
                                                  r"which is not installed on this host") as info:
        Analyzer(pkg_mapping={"cv2": "opencv-python"})
    assert isinstance(info.value, ValueError) and len(info.value.problems) == 1


def test_pkg_mapping_typo_gets_did_you_mean():
    with pytest.raises(AnalysisOptionError, match=r"did you mean 'scikit-learn'"):
        Analyzer(pkg_mapping={"sklearn": "scikit-lern"})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (["numpy"], r"pkg_mapping must be a dict"),
        ({"numpy": 3}, r"pkg_mapping\['numpy'\] is 3: it must be a distribution name"),
        ({"not a module": "numpy"}, r"pkg_mapping key 'not a module' is not a module name"),
        ({"np": ""}, r"pkg_mapping\['np'\] is ''"),
    ],
)
def test_bad_pkg_mapping_shapes(mapping, message):
    with pytest.raises(AnalysisOptionError, match=message):
        Analyzer(pkg_mapping=mapping)


def test_ignore_of_a_non_string():
    with pytest.raises(AnalysisOptionError, match=r"ignore\[1\] is 3 \(int\): ignore entries "
                                                  r"must be strings"):
        Analyzer(ignore=["numpy", 3])


def test_ignore_given_as_a_string():
    with pytest.raises(AnalysisOptionError, match=r"ignore must be a list of names, got the "
                                                  r"string 'numpy'; did you mean \['numpy'\]"):
        Analyzer(ignore="numpy")


def test_every_problem_is_reported_at_once():
    with pytest.raises(AnalysisOptionError, match=r"Invalid analysis options") as info:
        Analyzer(ignore=[None], extra_pkgs=["not-installed-poncho-pkg"], channels="conda-forge")
    assert len(info.value.problems) == 3


def test_extra_pkgs_pinned_with_their_dependencies():
    spec = Analyzer(extra_pkgs=["pandas", "leftpad-poncho==0.1"]).analyze(lambda: None)
    pinned = {p.split("==")[0] for p in spec.pip}
    assert {"pandas", "numpy", "leftpad-poncho"} <= pinned


def test_extra_pkgs_not_installed():
    with pytest.raises(AnalysisOptionError, match=r"extra_pkgs names 'not-installed-poncho-pkg'"
                                                  r", which is not installed"):
        Analyzer(extra_pkgs=["not-installed-poncho-pkg"])


def test_not_callable():
    with pytest.raises(AnalysisError, match=r"Cannot analyse 42: it is not callable"):
        Analyzer().analyze(42)


def test_unreadable_conda_record(tmp_path):
    (tmp_path / "conda-meta").mkdir()
    (tmp_path / "conda-meta" / "broken-1.0-0.json").write_text("{not json")
    task = _function("def task():\n    import numpy\n")
    with pytest.raises(AnalysisError, match=r"Conda record .*broken-1.0-0.json is unreadable"):
        Analyzer(conda_prefix=str(tmp_path)).analyze(task)
