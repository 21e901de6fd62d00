"""Tests for `poncho_package_analyze` (parsl_poncho/cli/analyze.py), run in-process."""

from __future__ import annotations

import importlib.metadata as metadata
import io
import json
import sys
from pathlib import Path

import pytest

from parsl_poncho.cli.analyze import main
from parsl_poncho.spec import Spec

SCRIPT = '''\
import numpy as np
import helper_poncho_cli
from pandas import DataFrame

def uses_helper():
    return helper_poncho_cli.run()

def target(x):
    import json
    return uses_helper(), np.zeros(x)

def other():
    return DataFrame()

if __name__ == "__main__":
    import scipy
'''


@pytest.fixture
def script(tmp_path, monkeypatch):
    (tmp_path / "helper_poncho_cli.py").write_text(
        "import sklearn\n\ndef run():\n    import json\n    return sklearn.__version__\n")
    path = tmp_path / "flow.py"
    path.write_text(SCRIPT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return path


def _pip(data):
    deps = data["conda"]["dependencies"]
    pip = [d for d in deps if isinstance(d, dict)]
    return {p.split("==")[0] for p in (pip[0]["pip"] if pip else [])}


def test_function_option(script, tmp_path):
    out = tmp_path / "spec.json"
    assert main([str(script), str(out), "--function", "target", "--no-transitive"]) == 0
    data = json.loads(out.read_text())
    assert _pip(data) == {"cloudpickle", "numpy", "scikit-learn"}
    assert data["conda"]["dependencies"][:2] == [f"python={sys.version.split()[0]}", "pip"]
    assert list(data["x-parsl-poncho"]["local"]) == ["helper_poncho_cli"]
    spec = Spec.from_dict(data)  # a valid spec for poncho_package_create
    assert spec.local[0].name == "helper_poncho_cli"


def test_whole_script_and_toplevel(script, tmp_path):
    out = tmp_path / "spec.json"
    assert main([str(script), str(out), "--no-transitive"]) == 0
    assert _pip(json.loads(out.read_text())) == {
        "cloudpickle", "numpy", "pandas", "scipy", "scikit-learn"}
    assert main([str(script), str(out), "--toplevel", "--no-transitive"]) == 0
    # module-body imports only (not the one under `if __name__ == "__main__":`), as cctools
    assert _pip(json.loads(out.read_text())) == {"cloudpickle", "numpy", "pandas", "scikit-learn"}


def test_pkg_mapping_extra_pkg_and_stdout(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.py"
    path.write_text("import cv2_poncho_missing\n")
    assert main([str(path), "-", "--pkg-mapping", "cv2_poncho_missing=numpy",
                 "--extra-pkg", "scipy", "--no-transitive"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert _pip(data) == {"cloudpickle", "numpy", "scipy"}
    pins = data["conda"]["dependencies"][-1]["pip"]
    assert f"numpy=={metadata.version('numpy')}" in pins


def test_stdin_source(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("import pandas\n"))
    assert main(["-", "--no-transitive"]) == 0
    assert _pip(json.loads(capsys.readouterr().out)) == {"cloudpickle", "pandas"}


def test_unresolvable_import_exit_code(tmp_path, capsys):
    path = tmp_path / "s.py"
    path.write_text("import json\nimport not_installed_poncho_cli\n")
    assert main([str(path), str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err
    assert "not_installed_poncho_cli" in err and f"{path}:2" in err and "--pkg-mapping" in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pkg-mapping", "cv2"], "is not IMPORT=NAME"),
        (["--extra-pkg", "not-installed-poncho-pkg"], "not installed on this host"),
        (["--function", "nope"], "No function or class 'nope'"),
    ],
)
def test_bad_options(script, tmp_path, capsys, argv, message):
    assert main([str(script), str(tmp_path / "o.json"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_function_and_toplevel_are_exclusive(script, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        main([str(script), "-", "--toplevel", "--function", "target"])


# -- issue 12: literal dynamic imports; installed modules read without importing them ---------
DYNAMIC = '''\
import importlib
charset = importlib.import_module("charset_normalizer")

def target():
    return __import__("idna"), importlib.import_module(".util", "corpus_pkg")

if __name__ == "__main__":
    importlib.import_module("certifi")
'''


def test_literal_dynamic_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(Path(__file__).parent / "analyze_corpus"), *sys.path])
    path = tmp_path / "dyn.py"
    path.write_text(DYNAMIC)
    out = tmp_path / "spec.json"
    assert main([str(path), str(out), "--function", "target", "--no-transitive"]) == 0
    data = json.loads(out.read_text())
    assert _pip(data) == {"cloudpickle", "idna", "pandas"}  # corpus_pkg/sub.py imports pandas
    assert list(data["x-parsl-poncho"]["local"]) == ["corpus_pkg"]
    assert main([str(path), str(out), "--toplevel", "--no-transitive"]) == 0
    assert _pip(json.loads(out.read_text())) == {"cloudpickle", "charset-normalizer"}
    assert main([str(path), str(out), "--no-transitive"]) == 0
    assert _pip(json.loads(out.read_text())) == {
        "cloudpickle", "charset-normalizer", "idna", "certifi", "pandas"}


def test_function_imported_from_an_installed_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "analyze_corpus"))
    from fake_dist import make_fake_dist

    files = {"poncho_cliowner/__init__.py": "",
             "poncho_cliowner/jobs.py": "import idna\n\ndef work(x):\n    return x\n"}
    site = make_fake_dist(tmp_path / "site", "poncho-cliowner", files)
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    path = tmp_path / "flow.py"
    path.write_text("from poncho_cliowner.jobs import work\n")
    out = tmp_path / "spec.json"
    assert main([str(path), str(out), "--function", "work", "--no-transitive"]) == 0
    # poncho-cliowner does not declare idna; its module imports it at top level
    assert _pip(json.loads(out.read_text())) == {"cloudpickle", "idna", "poncho-cliowner"}
    assert "poncho_cliowner" not in sys.modules  # read, never imported


def test_parsl_test_function_needs_pytest(tmp_path):
    path = tmp_path / "flow.py"
    path.write_text("from parsl.tests.test_execute_task import addemup\n")
    out = tmp_path / "spec.json"
    assert main([str(path), str(out), "--function", "addemup", "--no-transitive"]) == 0
    assert _pip(json.loads(out.read_text())) == {"cloudpickle", "parsl", "pytest"}
