"""Shared helpers for the build steps: hermetic subprocess runs that fail as BuildError."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from parsl_poncho.errors import BuildError

#: Lines of a failed command's output kept in BuildError.log_tail.
LOG_TAIL_LINES = 40

#: The system CA bundle, used to keep TLS working when the host's pip/uv settings are dropped.
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

# Variables that would let the host's configuration leak into a build.
_DROP_PREFIXES = ("PIP_", "UV_", "CONDA_", "MAMBA_", "PYTHON")
_DROP_NAMES = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP"}


def ca_bundle() -> str | None:
    """The CA bundle to trust: $SSL_CERT_FILE if it exists, else the system bundle, else None."""
    explicit = os.environ.get("SSL_CERT_FILE")
    if explicit and os.path.isfile(explicit):
        return explicit
    for candidate in SYSTEM_CA_BUNDLES:
        if os.path.isfile(candidate):
            return candidate
    return None


def hermetic_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without pip/uv/conda/python settings, plus PIP_CONFIG_FILE=/dev/null."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROP_NAMES and not key.startswith(_DROP_PREFIXES)
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    bundle = ca_bundle()
    if bundle:
        env["SSL_CERT_FILE"] = bundle
    if extra:
        env.update(extra)
    return env


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(
    cmd: Sequence[str],
    *,
    step: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    package: str | None = None,
    what: str | None = None,
) -> str:
    """Run ``cmd`` capturing stdout+stderr; return the output or raise BuildError with its tail."""
    try:
        proc = subprocess.run(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise BuildError(
            f"{step}: cannot run {cmd[0]!r}: not found; install it or choose another tool",
            step=step,
            package=package,
        ) from exc
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        raise BuildError(
            f"{step}: {what or cmd[0]} did not finish within {timeout} s",
            step=step,
            package=package,
            log_tail=tail(out or ""),
            log=out or "",
        ) from exc
    if proc.returncode != 0:
        raise BuildError(
            f"{step}: {what or ' '.join(cmd[:3])} failed with exit code {proc.returncode}",
            step=step,
            package=package,
            log_tail=tail(proc.stdout),
            log=proc.stdout,
        )
    return proc.stdout


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def site_packages(prefix: Path) -> Path:
    """``<prefix>/lib/pythonX.Y/site-packages`` of the env's python; BuildError when absent."""
    found = sorted(prefix.glob("lib/python3*/site-packages"))
    if not found:
        raise BuildError(
            f"The environment {str(prefix)!r} has no Python: add 'python' to the spec's conda "
            "packages (pip packages and local code need it)",
            step="code",
            package="python",
        )
    return found[-1]
