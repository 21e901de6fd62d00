"""Tests for parsl_poncho/analyze/dynamic.py: literal import_module / __import__ calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from parsl_poncho.analyze import Analyzer, find_modules
from parsl_poncho.analyze.dynamic import literal_imports
from parsl_poncho.errors import UnresolvedImportError

CORPUS = Path(__file__).parent / "analyze_corpus"


def _found(source: str) -> list[tuple[str, int]]:
    code = compile(source, "<test>", "exec")
    fn = next(c for c in code.co_consts if hasattr(c, "co_code"))
    return [(lit.module, lit.level) for lit in literal_imports(fn)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("import importlib\n    importlib.import_module('json')", [("json", 0)]),
        ("import importlib as il\n    il.import_module('a.b')", [("a.b", 0)]),
        ("from importlib import import_module\n    import_module('x')", [("x", 0)]),
        ("from importlib import import_module as im\n    im('zz')", [("zz", 0)]),
        ("import importlib\n    importlib.import_module('.x', 'pkg')", [("pkg.x", 0)]),
        ("import importlib\n    importlib.import_module('..x', package='a.b')", [("a.x", 0)]),
        ("import importlib\n    importlib.import_module('..y', __package__)", [("y", 2)]),
        ("__import__('six')", [("six", 0)]),
        ("__import__('a.b', globals(), locals(), ['c'], 0)", [("a.b", 0)]),
        ("import builtins\n    builtins.__import__('q')", [("q", 0)]),
        # not literal, or not resolvable: nothing
        ("import importlib\n    importlib.import_module(name)", []),
        ("import importlib\n    importlib.import_module('.x')", []),
        ("import importlib\n    importlib.import_module('.x', pkg)", []),
        ("__import__('.x')", []),
        ("import_module = print\n    x = import_module.__name__", []),
    ],
)
def test_literal_imports(body, expected):
    assert _found(f"def f(name=None, pkg=None):\n    {body}\n") == expected


def test_code_without_the_names_is_not_disassembled():
    assert _found("def f():\n    return 'import_module'\n") == []


def _main_function(source: str):
    """A function defined in __main__ (pickled by value), as in a workflow script."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<workflow>", "exec"), namespace)
    return namespace["app"]


def test_dynamic_imports_of_a_main_function_are_in_the_spec():
    app = _main_function(
        "import importlib\n"
        "from importlib import import_module\n"
        "def app():\n"
        "    a = importlib.import_module('idna')\n"
        "    b = __import__('certifi')\n"
        "    c = import_module('charset_normalizer')\n"
        "    return a, b, c\n")
    spec = Analyzer(pin_transitive=False).analyze(app)
    assert {p.split("==")[0] for p in spec.pip} == {
        "cloudpickle", "idna", "certifi", "charset-normalizer"}


def test_relative_dynamic_import_of_a_local_package(monkeypatch):
    monkeypatch.syspath_prepend(str(CORPUS))
    app = _main_function(
        "import importlib\n"
        "def app():\n"
        "    return importlib.import_module('.util', 'corpus_pkg').label(1)\n")
    req = Analyzer().requirements(app)
    assert "corpus_pkg.util" in req.modules
    assert [code.name for code in req.local] == ["corpus_pkg"]


def test_guarded_dynamic_import_of_a_missing_module_is_skipped():
    app = _main_function(
        "import importlib\n"
        "def app():\n"
        "    try:\n"
        "        return importlib.import_module('poncho_nowhere_dyn')\n"
        "    except ImportError:\n"
        "        return None\n")
    assert Analyzer().requirements(app).skipped == ("poncho_nowhere_dyn",)


def test_unguarded_dynamic_import_of_a_missing_module_is_an_error():
    app = _main_function("def app():\n    return __import__('poncho_nowhere_dyn')\n")
    with pytest.raises(UnresolvedImportError, match=r"'poncho_nowhere_dyn'.*<workflow>:2"):
        Analyzer().requirements(app)


def test_find_modules_sees_dynamic_imports_in_nested_code():
    def outer():
        return [__import__("json") for _ in range(1)]

    assert "json" in find_modules(outer)
