"""Check a built environment on the submit host: the modules a task needs import inside it.

The environment is unpacked once through the worker shim (``poncho_run -u DIR``, exactly what a
worker does; a code layer with ``-c``, on ``PYTHONPATH`` ahead of the env), then one Python
process started in it imports every module the analysis found.
A module that does not import fails, before dispatch, exactly the tasks that need it, with a
message naming the module and the distribution that should have provided it, instead of
letting every task die one by one on the workers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Sequence

from parsl_poncho.errors import EnvVerificationError

#: Runs in the environment's own Python: import each module named in argv, print a JSON report.
_IMPORT_SCRIPT = r"""
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # SystemExit from a module counts as a failure too
        failed[name] = "%s: %s" % (type(exc).__name__, exc)
print("PONCHO-VERIFY " + json.dumps(failed))
"""

_MARK = "PONCHO-VERIFY "

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def verify_env(
    tarball: Path,
    modules: Mapping[str, str | None],
    *,
    env_hash: str,
    poncho_run: Path,
    unpack_dir: Path,
    sha256: str | None = None,
    code: Path | None = None,
    code_sha256: str | None = None,
    timeout: float = 600,
    runner: Runner = subprocess.run,
) -> None:
    """Import ``modules`` (module name -> distribution or None) inside the packed environment.

    :param tarball: the environment's ``env-<hash>.tar.gz``.
    :param modules: what to import, with the distribution each should come from (for messages).
    :param env_hash: the environment's hash (for messages).
    :param poncho_run: the worker shim used to unpack and activate the environment.
    :param unpack_dir: the shim's cache directory for these checks (one subdirectory per env,
        kept so later checks of the same env are fast).
    :param code: the env's code layer (``code-<key>.tar.gz``), if it has local code.
    :raises EnvVerificationError: a module does not import, or the environment does not start.

    >>> verify_env(Path("env-ab.tar.gz"), {"numpy": "numpy"}, env_hash="ab",
    ...            poncho_run=Path("poncho_run"), unpack_dir=Path("/tmp/u"))  # doctest: +SKIP
    """
    names = sorted(modules)
    if not names:
        return
    unpack_dir, tarball = Path(unpack_dir).absolute(), Path(tarball).absolute()
    command: list[str] = ["sh", str(Path(poncho_run).absolute()), "-e", str(tarball),
                          "--cache-dir", str(unpack_dir)]
    if sha256:
        command += ["-s", sha256]
    if code is not None:
        command += ["-c", str(Path(code).absolute())]
        command += ["--code-sha256", code_sha256] if code_sha256 else []
    command += ["--", "python", "-c", _IMPORT_SCRIPT, *names]
    try:
        Path(unpack_dir).mkdir(parents=True, exist_ok=True)
        # Run in unpack_dir: the workflow's directory (the cwd) must not lend its local modules.
        proc = runner(command, capture_output=True, text=True, timeout=timeout, check=False,
                      cwd=str(unpack_dir))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvVerificationError(
            f"Could not start Python in environment env-{env_hash} to check its imports: {exc}",
            env_hash=env_hash,
        ) from exc
    failed = _parse_report(proc.stdout)
    if failed is None:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise EnvVerificationError(
            f"Environment env-{env_hash} ({tarball}) does not start: poncho_run exited with "
            f"status {proc.returncode}. Remove the cache entry ('parsl-poncho cache rm "
            f"{env_hash}') to rebuild it.\n{tail}",
            env_hash=env_hash,
        )
    if failed:
        raise _failure(failed, modules, env_hash)


def _parse_report(stdout: str) -> dict[str, str] | None:
    """The import failures printed by the check script, or None if it never reported."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARK):
            report = json.loads(line[len(_MARK):])
            return {str(k): str(v) for k, v in report.items()}
    return None


def _failure(
    failed: Mapping[str, str], modules: Mapping[str, str | None], env_hash: str
) -> EnvVerificationError:
    """One error naming every module that failed and the distribution each should come from."""
    lines = []
    for name in sorted(failed):
        dist = modules.get(name)
        source = f"distribution {dist!r}" if dist else "local code or an unmapped distribution"
        lines.append(f"  {name} (from {source}): {failed[name]}")
    first = sorted(failed)[0]
    hint = (
        "Fix: if a distribution is missing or wrong, map the module with "
        "PonchoExecutor(envs=EnvOptions(pkg_mapping={'<module>': '<distribution>'})) or add "
        "it with EnvOptions(extra_pkgs=[...])."
    )
    msg = (
        f"Environment env-{env_hash} cannot import module {first!r} needed by this task "
        f"(distribution {modules.get(first)!r}):\n" + "\n".join(lines) + "\n" + hint
    )
    return EnvVerificationError(msg, env_hash=env_hash, module=first,
                                distribution=modules.get(first))


def modules_to_check(modules: Sequence[str]) -> list[str]:
    """Top-level names to import, deduplicated, keeping submodules only when given explicitly."""
    return sorted({m for m in modules if m and not m.startswith("_")})
