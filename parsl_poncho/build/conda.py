"""The conda part of a build: solve and install match specs into a fresh prefix.

Two backends: py-rattler (default; no conda installation needed) and a conda, mamba or
micromamba executable. Channels may be names (``conda-forge``, ``defaults``), URLs, ``file://``
URLs or local directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from parsl_poncho.build._util import hermetic_env, run_step, tail
from parsl_poncho.errors import BuildError

Solver = Literal["rattler", "conda", "mamba", "micromamba"]
SOLVERS: tuple[str, ...] = ("rattler", "conda", "mamba", "micromamba")

#: What the ``defaults`` channel name stands for.
DEFAULTS_URLS = ("https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r")
CHANNEL_ALIAS = "https://conda.anaconda.org"

_NO_CANDIDATES = re.compile(r"No candidates were found for ([A-Za-z0-9_.\-]+)")
_CANNOT_INSTALL = re.compile(r"([A-Za-z0-9_.\-]+)[^\n]*? cannot be installed because")
_NOT_AVAILABLE = re.compile(r"^\s*-\s*([A-Za-z0-9_.\-]+)", re.MULTILINE)
_MAMBA_NOTHING = re.compile(r"nothing provides (?:requested )?([A-Za-z0-9_.\-]+)")


def channel_urls(channel: str) -> list[str]:
    """The URL(s) a channel name, URL or local directory stands for.

    >>> channel_urls("conda-forge")
    ['https://conda.anaconda.org/conda-forge']
    """
    channel = channel.strip()
    if "://" in channel:
        return [channel.rstrip("/")]
    if channel == "defaults":
        return list(DEFAULTS_URLS)
    looks_local = channel.startswith(("/", ".", "~")) or os.sep in channel
    if looks_local or Path(channel).is_dir():
        return [Path(channel).expanduser().absolute().as_uri()]
    return [f"{CHANNEL_ALIAS}/{channel}"]


def resolve_channels(channels: Sequence[str]) -> list[str]:
    """Every channel as a URL, in order, without duplicates."""
    urls: list[str] = []
    for channel in channels:
        for url in channel_urls(channel):
            if url not in urls:
                urls.append(url)
    return urls


def spec_name(match_spec: str) -> str:
    """The package name of a match spec (``"numpy>=1.2"`` -> ``"numpy"``)."""
    spec = match_spec.strip()
    if "::" in spec:
        spec = spec.split("::", 1)[1]
    return re.split(r"[\s=<>!~\[]", spec, maxsplit=1)[0].lower()


@dataclass
class CondaRequest:
    """What to install: match specs from the given channels into ``prefix`` for ``platform``."""

    prefix: Path
    specs: list[str]
    channels: list[str]  # URLs
    platform: str
    cache_dir: Path
    timeout: float | None = None


class RattlerBackend:
    """Solve with py-rattler (virtual packages detected on this host) and install.

    Runs in a child process (``_rattler_child``) so py-rattler's threads can never crash the
    caller's interpreter at exit.
    """

    name = "rattler"

    def create(self, request: CondaRequest) -> dict[str, float]:
        """Solve and install ``request``; return {"solve": s, "install": s}.

        :raises BuildError: step "solve" (unsatisfiable, unreachable channel) or "install".
        """
        result = run_rattler_child(
            {
                "op": "create",
                "prefix": str(request.prefix),
                "specs": list(request.specs),
                "channels": list(request.channels),
                "platform": request.platform,
                "cache_dir": str(request.cache_dir),
            },
            step="solve",
            timeout=request.timeout,
        )
        if not result.get("ok"):
            kind, text = result.get("kind", ""), result.get("message", "")
            if result.get("where") == "install":
                full = ("; no space left on device: free space there or build elsewhere "
                        "(BuildOptions.workdir / cache_dir)"
                        if "No space left on device" in text or "os error 28" in text else "")
                raise BuildError(
                    f"install: could not download or link the conda packages into "
                    f"{str(request.prefix)!r}: {first_line_of(text, kind)}{full}",
                    step="install",
                    log_tail=tail(text),
                )
            raise solve_error(kind, text, request)
        # rattler leaves a cache tag in the prefix: it is not part of any package.
        tag = request.prefix / "CACHEDIR.TAG"
        if tag.exists():
            tag.unlink()
        return {k: float(v) for k, v in result.get("phases", {}).items()}


def run_rattler_child(
    payload: dict[str, Any], *, step: str, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``payload`` in ``python -m parsl_poncho.build._rattler_child``; return its result."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH", "")) if p
    )
    # Beside the env being built (the build's scratch dir, reaped after a crash), not $TMPDIR,
    # where a builder killed meanwhile left the directory forever.
    prefix = payload.get("prefix")
    where = str(Path(prefix).parent) if prefix and Path(prefix).parent.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="rattler-", dir=where) as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "parsl_poncho.build._rattler_child", str(result_path)]
        try:
            proc = subprocess.run(cmd, input=json.dumps(payload), text=True, env=env,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BuildError(
                f"{step}: py-rattler did not finish within {timeout} s (slow or unreachable "
                "channel?)",
                step=step,
            ) from exc
        if proc.returncode != 0 or not result_path.exists():
            said = [line for line in proc.stderr.splitlines() if line.strip()]
            raise BuildError(
                f"{step}: the py-rattler helper process failed (exit code {proc.returncode})"
                + (f": {said[-1].strip()}" if said else ""),
                step=step,
                log_tail=tail(proc.stderr + proc.stdout),
            )
        return dict(json.loads(result_path.read_text()))


def host_platform() -> str:
    """This host's conda subdir (``linux-64``)."""
    from parsl_poncho.build.channel import current_subdir

    return current_subdir()


def first_line_of(text: str, kind: str = "") -> str:
    """The first non-empty line of an error message (or the exception kind)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else kind or "unknown error"


def solve_error(kind: str, text: str, request: CondaRequest) -> BuildError:
    """Turn a rattler solve/gateway failure into a BuildError that names the package or channel."""
    if kind == "SolverError" or "Cannot solve" in text:
        package = conda_package_in_error(text)
        where = f" for {package!r}" if package else ""
        hint = ("Check the name and version pins, or add a channel that has the package "
                "(--channel / BuildOptions.channels)")
        if package == "python" and any(url.startswith("file:") for url in request.channels):
            hint += (f". A seeded local channel holds only the Python that seeded it "
                     f"({_host_python()}): seed it from the Python you need")
        reason = text.strip().splitlines()[-1].strip().rstrip(".")
        reason = reason.replace("Cannot solve the request because of: ", "")
        return BuildError(
            f"solve: no solution{where} in channels {', '.join(request.channels)} "
            f"({reason}). {hint}",
            step="solve",
            package=package,
            log_tail=tail(text),
        )
    channel = next((url for url in request.channels if url.rstrip("/") in text), None)
    where = f"channel {channel!r}" if channel else f"channels {', '.join(request.channels)}"
    return BuildError(
        f"solve: could not read the package index of {where}: {first_line_of(text, kind)}. Is "
        "it reachable from here? Without conda channels, build from a local channel seeded "
        "with this Python: poncho_package_create --offline, or `parsl-poncho channel seed DIR` "
        "and BuildOptions(channels=(DIR,)) / --channel DIR --override-channels",
        step="solve",
        package=None,
        log_tail=tail(text),
    )


def _host_python() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def conda_package_in_error(text: str) -> str | None:
    """The package a solver's error message blames, if one can be found."""
    for pattern in (_NO_CANDIDATES, _MAMBA_NOTHING, _CANNOT_INSTALL):
        match = pattern.search(text)
        if match:
            return match.group(1).rstrip(".")
    if "PackagesNotFoundError" in text or "not available from current channels" in text:
        after = text.split("current channels", 1)[-1]
        match = _NOT_AVAILABLE.search(after)
        if match:
            return spec_name(match.group(1))
    return None


class ExecutableBackend:
    """Drive a conda, mamba or micromamba executable (``create --prefix``)."""

    def __init__(self, kind: Solver, executable: str | None = None):
        if kind not in ("conda", "mamba", "micromamba"):
            raise BuildError(
                f"solver {kind!r} has no executable backend: use conda, mamba or micromamba",
                step="solve",
            )
        self.name = kind
        self.kind = kind
        self.executable = executable

    def find(self) -> str:
        """The executable to run: the one given, else ``kind`` (or $CONDA_EXE) on PATH."""
        if self.executable:
            found = shutil.which(self.executable) or (
                self.executable if os.path.isfile(self.executable) else None
            )
        else:
            found = shutil.which(self.kind)
            if not found and self.kind == "conda" and os.environ.get("CONDA_EXE"):
                found = shutil.which(os.environ["CONDA_EXE"])
        if not found:
            raise BuildError(
                f"solve: the {self.kind} executable {self.executable or self.kind!r} was not "
                "found: put it on PATH, pass its path (--conda-executable), or use the default "
                "rattler solver",
                step="solve",
                package=None,
            )
        return found

    def command(self, request: CondaRequest, executable: str) -> list[str]:
        """The ``create`` command line for ``request``."""
        cmd = [executable, "create", "--yes", "--quiet", "--prefix", str(request.prefix)]
        if self.kind == "micromamba":
            cmd.append("--no-rc")
        cmd.append("--override-channels")
        for url in request.channels:
            cmd += ["--channel", url]
        if request.platform != host_platform():
            cmd += ["--platform", request.platform]
        return cmd + list(request.specs)

    def environment(self, request: CondaRequest) -> dict[str, str]:
        """Hermetic environment with the package cache under ``cache_dir``."""
        pkgs = request.cache_dir / f"pkgs-{self.kind}"
        extra = {"CONDA_PKGS_DIRS": str(pkgs)}
        if self.kind == "micromamba":
            extra["MAMBA_ROOT_PREFIX"] = str(request.cache_dir / "micromamba-root")
        return hermetic_env(extra)

    def create(self, request: CondaRequest) -> dict[str, float]:
        """Run the executable; a failure becomes BuildError(step="solve") naming the package."""
        executable = self.find()
        start = time.perf_counter()
        try:
            run_step(
                self.command(request, executable),
                step="solve",
                env=self.environment(request),
                timeout=request.timeout,
                what=f"{self.kind} create",
            )
        except BuildError as exc:
            package = conda_package_in_error(exc.log_tail)
            raise BuildError(
                f"solve: {self.kind} could not create the environment"
                + (f" (package {package!r})" if package else "")
                + f" from channels {', '.join(request.channels)}; see the log tail. Check the "
                "version pins and that the channels are reachable",
                step="solve",
                package=package,
                log_tail=exc.log_tail,
            ) from exc
        return {"solve": time.perf_counter() - start, "install": 0.0}


def make_backend(solver: str, executable: str | None = None) -> RattlerBackend | ExecutableBackend:
    """The backend for ``solver`` ("rattler", "conda", "mamba", "micromamba")."""
    if solver == "rattler":
        return RattlerBackend()
    if solver in ("conda", "mamba", "micromamba"):
        return ExecutableBackend(solver, executable)  # type: ignore[arg-type]
    raise BuildError(
        f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}", step="solve"
    )


def conda_records(prefix: Path) -> list[dict[str, Any]]:
    """The installed conda packages of ``prefix`` (from conda-meta/*.json), sorted by name."""
    records = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        records.append(data)
    return sorted(records, key=lambda r: r.get("name", ""))


def lock_entries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's view of conda records: name, version, build, channel, url, sha256."""
    keys = ("name", "version", "build", "build_number", "subdir", "channel", "url", "sha256", "md5")
    return [{key: record.get(key) for key in keys if record.get(key) is not None}
            for record in records]
