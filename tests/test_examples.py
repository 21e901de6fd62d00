"""The examples run as a new user would run them (each in its own working directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# each example may build its envs cold: the test limit is above the script's own 900 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private env cache shared by the examples, so they build into a clean cache."""
    cache = tmp_path_factory.mktemp("example-cache")
    return {**os.environ, "PARSL_PONCHO_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def run_example(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_quickstart_pi(example_env: dict[str, str], tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "pi_montecarlo.py"), "--tasks", "4",
                       "--samples", "200000"], example_env, tmp_path)
    assert "pi ~= 3.1" in out
    assert "tasks ran in environment" in out


def test_physics_workflow_with_http_and_git_data(example_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "physics" / "workflow.py"), "--runs", "2",
                       "--events", "5000"], example_env, tmp_path)
    assert "peak at 9" in out


def test_sklearn_sweep(example_env: dict[str, str], tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "sklearn_sweep" / "sweep.py")],
                      example_env, tmp_path)
    assert "best: C=" in out


def test_cli_by_hand(example_env: dict[str, str], tmp_path: Path) -> None:
    env = {**example_env, "TMPDIR": str(tmp_path)}
    out = run_example(["sh", str(EXAMPLES / "cli_by_hand" / "run.sh")], env, tmp_path)
    assert '{"mean": 3.0' in out


def test_multiprocessing_pool(example_env: dict[str, str], tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "multiprocessing_pool.py"), "--windows",
                       "300"], example_env, tmp_path)
    stdlib = run_example([sys.executable, str(EXAMPLES / "multiprocessing_pool.py"),
                          "--windows", "300", "--stdlib"], example_env, tmp_path)
    assert out.startswith("parsl_poncho.multiprocessing: 300 windows, mean |x| 0.")
    numbers = [text.split(": ", 1)[1].rsplit(" (", 1)[0] for text in (out, stdlib)]
    assert numbers[0] == numbers[1]  # the same windows, means and largest as the stdlib's


def test_joblib_gridsearch(example_env: dict[str, str], tmp_path: Path) -> None:
    out = run_example([sys.executable, str(EXAMPLES / "joblib_gridsearch.py")], example_env,
                      tmp_path)
    loky = run_example([sys.executable, str(EXAMPLES / "joblib_gridsearch.py"), "--backend",
                        "loky"], example_env, tmp_path)
    assert out.startswith("poncho: best {'C': 10, 'gamma': 0.001} scores 0.9")
    results = [text.split(": ", 1)[1].rsplit(" (", 1)[0] for text in (out, loky)]
    assert results[0] == results[1]  # the same search, fits and scores as loky's
