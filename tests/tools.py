"""External tools the tests need: a missing one skips outside CI and fails under ``CI=true``.

``scripts/setup.sh`` installs every tool named here; CI runs on a fresh machine, so a test that
silently skipped there would prove nothing. Use :func:`require_tool` in a test or fixture, or
:func:`tool_mark` as a ``pytest.param`` mark.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

#: command -> the Debian package that provides it (what setup.sh installs).
TOOL_PACKAGES = {
    "busybox": "busybox",
    "shellcheck": "shellcheck",
    "work_queue_worker": "coop-computing-tools",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sbatch": "slurm-wlm",
    "munged": "munge",
    "unshare": "util-linux",
    "mount": "mount",
}


def under_ci() -> bool:
    """Whether this run is CI's (``CI=true``): missing tools then fail instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tool_reason(tool: str) -> str:
    package = TOOL_PACKAGES.get(tool, tool)
    return (f"{tool} is not installed (Debian package {package!r}: "
            f"apt-get install {package}, or run `make setup`)")


def require_tool(tool: str) -> str:
    """The path of ``tool``; skip the test if it is missing (fail under CI)."""
    path = shutil.which(tool)
    if path is None:
        reason = missing_tool_reason(tool)
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def require(condition: bool, reason: str) -> None:
    """Skip (fail under CI) when a needed capability such as root or a mount is missing."""
    if not condition:
        if under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


def can_hide_host_python() -> bool:
    """Whether a worker can be started with the host Python hidden (root, unshare, tmpfs)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /root/.pyenv"],
        capture_output=True,
    )
    return probe.returncode == 0
