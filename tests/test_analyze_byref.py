"""Tests for parsl_poncho/analyze/byref.py: what importing an installed module remotely needs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parsl_poncho.analyze import Analyzer, byref

CORPUS = Path(__file__).parent / "analyze_corpus"
if str(CORPUS) not in sys.path:
    sys.path.insert(0, str(CORPUS))

from fake_dist import make_fake_dist  # noqa: E402

# parsl.tests modules carry marks that only Parsl's own conftest registers
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")

OWNER = "poncho_fakeowner"
TEST_MOD = '''\
import importlib
import sys
from typing import TYPE_CHECKING

import idna  # not declared by the owner
import urllib3  # declared by the owner
from poncho_fakeowner.tests import helpers

try:
    import certifi  # optional: the module does without it
except ImportError:
    certifi = None

try:
    import poncho_not_installed_anywhere
except ImportError:
    poncho_not_installed_anywhere = None

if TYPE_CHECKING:
    import requests

if sys.version_info < (3,):
    import poncho_missing_in_branch

charset = importlib.import_module("charset_normalizer")


def remote(x):
    return x


class Thing:
    pass
'''
FILES = {
    f"{OWNER}/__init__.py": "import json\n",
    f"{OWNER}/core.py": "import os\n\n\ndef core_fn(x):\n    return os.fspath(x)\n",
    f"{OWNER}/tests/__init__.py": "",
    f"{OWNER}/tests/test_mod.py": TEST_MOD,
    f"{OWNER}/tests/helpers.py": "from typeguard import typechecked\n",
}


@pytest.fixture
def fake_owner(tmp_path, monkeypatch):
    """An installed distribution 'poncho-fakeowner' (requires urllib3) on sys.path."""
    root = make_fake_dist(tmp_path / "site", "poncho-fakeowner", FILES, requires=["urllib3"])
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == OWNER or m.startswith(OWNER + ".")]:
        del sys.modules[name]


def _names(req) -> set[str]:
    return {d.name for d in req.distributions}


def test_by_reference_function_needs_its_modules_undeclared_imports(fake_owner):
    from poncho_fakeowner.tests.test_mod import remote

    req = Analyzer().requirements(remote)
    # idna at top level, charset_normalizer by import_module, typeguard through helpers
    assert _names(req) == {"poncho-fakeowner", "idna", "charset-normalizer", "typeguard"}
    assert "test_mod.py:5" in req.modules["idna"].where
    assert req.modules["typeguard"].optional  # found by scanning: not verified remotely
    # not installed here, so in a branch not taken (or handled): no error, nothing added
    assert "poncho_missing_in_branch" not in req.modules
    # declared (urllib3), guarded (certifi) and TYPE_CHECKING (requests) imports are not added
    assert not {"urllib3", "certifi", "requests"} & set(req.modules)
    spec = Analyzer().analyze(remote)
    pinned = {p.split("==")[0] for p in spec.pip}
    assert {"idna", "charset-normalizer", "typeguard", "urllib3"} <= pinned  # urllib3: declared
    assert "certifi" not in pinned and "requests" not in pinned


def test_instance_of_an_installed_class_needs_its_module_imports(fake_owner):
    from poncho_fakeowner.tests.test_mod import Thing

    req = Analyzer().requirements(lambda thing: thing, Thing())
    assert {"idna", "typeguard", "charset-normalizer"} <= _names(req)


def test_the_owners_package_does_not_drag_in_its_loaded_submodules(fake_owner):
    import poncho_fakeowner.tests.test_mod  # noqa: F401 - loaded here, not imported by core
    from poncho_fakeowner.core import core_fn

    assert _names(Analyzer().requirements(core_fn)) == {"poncho-fakeowner"}


def test_module_not_loaded_is_read_without_importing_it(fake_owner):
    found = byref.module_imports(f"{OWNER}.tests.test_mod")
    assert {"idna", "urllib3", "charset_normalizer", f"{OWNER}.tests.helpers"} <= set(found)
    assert not {"certifi", "requests", "poncho_not_installed_anywhere"} & set(found)
    assert all(use.optional for use in found.values())
    assert OWNER not in sys.modules and f"{OWNER}.tests.test_mod" not in sys.modules


def test_owner_modules_are_followed_to_a_bounded_depth(tmp_path, monkeypatch):
    chain = {f"poncho_chain/sub/m{i}.py": f"import poncho_chain.sub.m{i + 1}\n" for i in range(5)}
    chain["poncho_chain/sub/m5.py"] = "import idna\n"
    chain.update({"poncho_chain/__init__.py": "", "poncho_chain/sub/__init__.py": ""})
    monkeypatch.syspath_prepend(str(make_fake_dist(tmp_path, "poncho-chain", chain)))
    analyzer = Analyzer()
    near = analyzer._imports.imports_of("poncho_chain.sub.m3", "poncho-chain")
    assert set(near) == {"idna"}  # m3 -> m4 -> m5 -> idna: two steps
    far = analyzer._imports.imports_of("poncho_chain.sub.m0", "poncho-chain")
    assert far == {}  # m5 is five steps away: beyond MAX_DEPTH (3)
    monkeypatch.setattr(byref, "MAX_DEPTH", 10)
    assert set(Analyzer()._imports.imports_of("poncho_chain.sub.m0", "poncho-chain")) == {"idna"}


# -- the real case: Parsl's own test apps live in parsl.tests.*, whose modules import pytest ---
def test_parsl_test_app_needs_pytest_and_pandas():
    pytest.importorskip("pandas")
    from parsl.tests.test_regression import test_226

    # get_foo_x's default argument is a test_226.Foo: the worker imports test_226 by reference
    spec = Analyzer().analyze(test_226.get_foo_x.func)
    pinned = {p.split("==")[0] for p in spec.pip}
    assert {"parsl", "pytest", "pandas"} <= pinned


def test_parsl_test_function_by_reference_needs_pytest():
    from parsl.tests.test_execute_task import addemup

    req = Analyzer().requirements(addemup)
    assert {"parsl", "pytest"} <= _names(req)
    assert "test_execute_task.py" in req.modules["pytest"].where


def test_parsl_itself_does_not_need_pytest():
    from parsl.app.bash import remote_side_bash_executor

    names = _names(Analyzer().requirements(remote_side_bash_executor))
    assert "parsl" in names and "pytest" not in names and "pandas" not in names

