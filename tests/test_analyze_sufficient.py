"""The analysed spec is sufficient: corpus functions run where only the spec's packages exist.

No environment is built: a directory holds links to exactly the files of the pinned pip
distributions and the local code, and an isolated interpreter (``-I -S``: no site-packages)
unpickles and calls the function with only that directory on its path.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from parsl_poncho.analyze import Analyzer

CORPUS = Path(__file__).parent / "analyze_corpus"
if str(CORPUS) not in sys.path:
    sys.path.insert(0, str(CORPUS))

import corpus_patterns  # noqa: E402

CASES = {c.name: c for c in corpus_patterns.CASES}
RUNNABLE = [  # one per kind of need; each costs an interpreter start importing the packages
    "mixed_numpy_scipy_pandas", "local_package_function", "uses_local_class",
    "global_function_alias", "argument_keyword_model",
]
RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
import cloudpickle
with open(sys.argv[2], "rb") as fh:
    fn, args, kwargs = cloudpickle.load(fh)
fn(*args, **kwargs)
"""


@pytest.fixture(autouse=True, scope="module")
def corpus_by_value():
    cloudpickle.register_pickle_by_value(corpus_patterns)
    yield
    cloudpickle.unregister_pickle_by_value(corpus_patterns)


def _link_site(spec, site: Path) -> None:
    site.mkdir()
    for requirement in spec.pip:
        dist = metadata.distribution(requirement.split("==")[0])
        for line in (dist.read_text("RECORD") or "").splitlines():
            head = line.split(",", 1)[0].split("/", 1)[0]
            target = Path(str(dist.locate_file(head)))
            if head and head != ".." and not (site / head).exists() and target.exists():
                (site / head).symlink_to(target)
    for code in spec.local:
        path = Path(code.path)
        (site / path.name).symlink_to(path)


@pytest.mark.parametrize("name", RUNNABLE)
def test_function_runs_with_only_its_spec(name, tmp_path):
    case = CASES[name]
    spec = Analyzer().analyze(case.func, *case.args, **case.kwargs)
    site = tmp_path / "site"
    _link_site(spec, site)
    payload = tmp_path / "fn.pkl"
    payload.write_bytes(cloudpickle.dumps((case.func, case.args, case.kwargs)))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUNNER, str(site), str(payload)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_missing_distribution_is_noticed(tmp_path):
    """The check itself is meaningful: drop pandas from the spec and the function fails."""
    case = CASES["closure_over_dataframe"]
    spec = Analyzer(pin_transitive=False).analyze(case.func)
    reduced = type(spec)(pip=tuple(p for p in spec.pip if not p.startswith("pandas==")))
    site = tmp_path / "site"
    _link_site(reduced, site)
    payload = tmp_path / "fn.pkl"
    payload.write_bytes(cloudpickle.dumps((case.func, (), {})))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUNNER, str(site), str(payload)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode != 0 and "pandas" in result.stderr
