"""A bare ``pip install`` (no extras, versions from the lock) runs the quick start.

The test venv has everything the test extras bring (pytest brought ``packaging``, for one), so
only a new venv shows a dependency that parsl-poncho imports but does not declare. The quick
start needs numpy, which is the user's own package, not one of ours: it is the only other
thing installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_bare_install_runs_the_quick_start(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python = str(venv / "bin" / "python")
    # a non-editable install of a copy of the sources (pip builds in the tree it is given):
    # what `pip install parsl-poncho` gets
    source = tmp_path / "source"
    shutil.copytree(ROOT / "parsl_poncho", source / "parsl_poncho",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
         str(source), "numpy"], timeout=900, cwd=tmp_path)
    freeze = run([python, "-m", "pip", "freeze"], timeout=120).stdout.lower().splitlines()
    names = {line.split("==")[0].split(" @ ")[0].strip() for line in freeze}
    assert "pytest" not in names and "parsl-poncho" in names, names
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PARSL_PONCHO_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "work"
    work.mkdir()
    out = run([python, str(ROOT / "examples" / "pi_montecarlo.py"), "--tasks", "4",
               "--samples", "200000"], timeout=900, cwd=work, env=env).stdout
    assert "pi ~= 3.1" in out
