"""Every third-party module parsl_poncho imports is declared in setup.cfg (checked by deptry).

A module that is only present because a test tool pulled it in (``packaging`` came with
pytest) would otherwise crash a bare ``pip install parsl-poncho`` at the first submit.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def declared_requirements() -> list[str]:
    """install_requires plus the optional extras users install (not the test extras)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    extras = config["options.extras_require"]
    lines += [line for name in extras if name != "test" for line in extras[name].splitlines()]
    return [line.strip() for line in lines if line.strip()]


def test_every_imported_distribution_is_declared(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(declared_requirements()) + "\n")
    deptry = Path(sys.executable).parent / "deptry"
    proc = subprocess.run(
        [str(deptry), "parsl_poncho", "--requirements-files", str(requirements),
         "--config", str(ROOT / "pyproject.toml"), "--no-ansi"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"undeclared or unused dependencies:\n{report}"
    assert "Scanning" in report  # it looked at the package, not at nothing
