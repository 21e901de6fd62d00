"""The pip part of a build: install PEP 508 requirements into the env with uv (else pip).

Hermetic: the host's pip/uv configuration (config files, PIP_*/UV_* variables, user site) is
ignored, but the system CA bundle is kept so TLS works behind an intercepting proxy. Where to
install from comes only from the request, which carries the user's configuration when they
want it (see parsl_poncho.pip_sources). Index URLs reach pip/uv through environment variables,
never the command line, so a credential in one is not visible in the process list. Packages
that conda installed are pinned with a constraints file so pip never replaces conda-managed files
(conda-pack refuses to pack an env where that happened). uv hard-links files from its cache (the
build dir is only read, then deleted, so nothing edits them in place).
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from parsl_poncho.build._util import ca_bundle, hermetic_env, run_step, site_packages
from parsl_poncho.build.diagnose import (
    DISK_FULL,
    cause_of,
    free_space,
    local_label_hint,
    local_labels,
)
from parsl_poncho.errors import BuildError
from parsl_poncho.pip_sources import scrub, strip_credentials

Installer = Literal["auto", "uv", "pip"]

_PIP_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")
_UV_NOT_FOUND = re.compile(r"Because ([A-Za-z0-9_.\-]+) was not found in the package registry")
_UV_NO_VERSION = re.compile(r"(?:Because )?there is no version of ([A-Za-z0-9_.\-]+)")
_UV_NOT_FOUND_ANY = re.compile(r"([A-Za-z0-9_.\-]+) was not found in the package registry")
_PIP_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)")


@dataclass
class PipRequest:
    """What to install into ``prefix`` and where from."""

    prefix: Path
    requirements: list[str]
    index_url: str | None = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    trusted_hosts: list[str] = field(default_factory=list)
    cache_dir: Path | None = None
    timeout: float | None = None
    compile_bytecode: bool = True
    #: URL without credentials -> as configured; scrubbed from any output we keep
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: the host's pip/uv configuration was ignored (error messages say so)
    hermetic: bool = False


def find_uv() -> str | None:
    """The uv executable: beside sys.executable, from the ``uv`` module, or on PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("uv")


def choose_installer(installer: Installer = "auto") -> tuple[str, str | None]:
    """("uv", path) when uv is wanted and available, else ("pip", None)."""
    if installer == "pip":
        return "pip", None
    uv = find_uv()
    if uv:
        return "uv", uv
    if installer == "uv":
        raise BuildError(
            "pip: uv was asked for but is not installed: pip install uv, or use installer 'pip'",
            step="pip",
            package="uv",
        )
    return "pip", None


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conda_managed_dists(prefix: Path, records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{normalised name: version} of Python distributions that conda packages installed."""
    managed: dict[str, str] = {}
    pattern = re.compile(r"^(?:lib/python[0-9.]+/)?site-packages/([^/]+)\.dist-info/METADATA$")
    for record in records:
        for path in record.get("files", []):
            match = pattern.match(path)
            if not match:
                continue
            name, _, version = match.group(1).partition("-")
            if name and version:
                managed[normalize(name)] = version
    return managed


def pip_command(
    installer: str,
    uv: str | None,
    request: PipRequest,
    constraints: Path | None,
) -> list[str]:
    """The install command line (no shell) for ``installer`` ("uv" or "pip")."""
    python = str(request.prefix / "bin" / "python")
    if installer == "uv":
        assert uv is not None
        cmd = [uv, "pip", "install", "--no-config", "--python", python, "--link-mode", "hardlink",
               "--no-progress"]
        if request.compile_bytecode:
            cmd.append("--compile-bytecode")
        if request.cache_dir is not None:
            cmd += ["--cache-dir", str(request.cache_dir / "uv")]
    else:
        cmd = [python, "-m", "pip", "install", "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location"]
        if not request.compile_bytecode:
            cmd.append("--no-compile")
        if request.cache_dir is not None:
            cmd += ["--cache-dir", str(request.cache_dir / "pip")]
        bundle = ca_bundle()
        if bundle:
            cmd += ["--cert", bundle]
    for host in request.trusted_hosts:
        cmd += ["--allow-insecure-host" if installer == "uv" else "--trusted-host", host]
    if installer == "uv" and request.extra_index_urls:
        # pip merges the versions of every index; uv by default takes a package from the first
        # index that has it. Builds follow the user's pip configuration, so they merge as pip.
        cmd += ["--index-strategy", "unsafe-best-match"]
    if constraints is not None:
        cmd += ["--constraint", str(constraints)]
    return cmd + ["--", *request.requirements] if installer == "pip" else cmd + list(
        request.requirements
    )


def index_env(installer: str, request: PipRequest) -> dict[str, str]:
    """The variables that give pip/uv the request's indexes and find-links (credentials in
    them stay off the command line)."""
    env: dict[str, str] = {}
    if installer == "uv":  # uv splits UV_FIND_LINKS on commas, the index lists on spaces
        primary, extra, links, links_sep = "UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS", ","
    else:
        primary, extra, links, links_sep = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
                                            "PIP_FIND_LINKS", " ")
    if request.index_url:
        env[primary] = request.index_url
    if request.extra_index_urls:
        env[extra] = " ".join(request.extra_index_urls)
    if request.find_links:
        env[links] = links_sep.join(request.find_links)
    return env


def install_pip(
    request: PipRequest,
    records: Sequence[dict[str, Any]],
    *,
    installer: Installer = "auto",
    scratch: Path,
) -> str:
    """Install ``request.requirements``; return the tool used ("uv x.y" / "pip x.y")."""
    if not request.requirements:
        return ""
    site_packages(request.prefix)  # raises when the env has no python
    for requirement in request.requirements:
        if requirement.lstrip().startswith("-"):
            raise BuildError(
                f"pip: requirement {requirement!r} looks like an option: pip options go in "
                "pip_options (index_url, extra_index_urls, find_links), not in the list",
                step="pip",
                package=requirement,
            )
    tool, uv = choose_installer(installer)
    if tool == "pip" and not (request.prefix / "bin" / "python").exists():
        raise BuildError("pip: the env has no bin/python", step="pip", package="python")
    managed = conda_managed_dists(request.prefix, records)
    constraints = None
    if managed:
        constraints = scratch / "conda-managed-constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(managed.items())))
    cmd = pip_command(tool, uv, request, constraints)
    try:
        run_step(cmd, step="pip", env=hermetic_env(index_env(tool, request)),
                 timeout=request.timeout, what=f"{tool} install")
    except BuildError as exc:
        # chained to the subprocess error, not to exc: exc holds the output before scrubbing
        raise pip_error(exc, tool, request, managed) from exc.__cause__
    return tool


def pip_error(
    exc: BuildError, tool: str, request: PipRequest, managed: dict[str, str]
) -> BuildError:
    """A BuildError that names the cause pip/uv reported and the requirement it concerns."""
    log = scrub(exc.log, request.credentials) if exc.log else ""
    tail_text = scrub(exc.log_tail, request.credentials)
    package = _failed_package(tail_text, request)
    cause = cause_of(tail_text)
    what = f" {package!r}" if package else ""
    if cause == "disk_full":
        hint = (f"the disk is full ({free_space([request.prefix, request.cache_dir or '/'])}): "
                "free space there, or set cache_dir / $PARSL_PONCHO_CACHE to a larger disk")
        message = f"pip: {tool} {DISK_FULL} while installing{what}: {hint}"
    elif cause == "network":
        message = (f"pip: {tool} could not reach the package index ({_sources(request)}) while "
                   f"installing{what}: check the network, the proxy (HTTPS_PROXY) and the URL")
    elif cause == "permission":
        message = (f"pip: {tool} was refused access while installing{what} (permission denied "
                   "or HTTP 401/403): check the index's credentials (in the URL or ~/.netrc) "
                   f"and that {request.cache_dir or request.prefix} is writable")
    else:
        message = f"pip: {tool} could not install{what}: " + _not_found_hint(
            package, request, managed)
    return BuildError(f"{message}; see the log tail", step="pip", package=package,
                      log_tail=tail_text, log=log)


def _failed_package(log: str, request: PipRequest) -> str | None:
    for pattern in (_PIP_NOT_FOUND, _UV_NOT_FOUND, _UV_NO_VERSION, _UV_NOT_FOUND_ANY):
        match = pattern.search(log)
        if match:
            return match.group(1).rstrip(".,")
    names = [_requirement_name(r) for r in request.requirements]
    return next((n for n in names if n and n in log), None)


def _not_found_hint(package: str | None, request: PipRequest, managed: dict[str, str]) -> str:
    if package and normalize(package) in managed:
        return (f"{package} is installed by conda ({managed[normalize(package)]}): pin that "
                "version or move it to the conda part; pip never replaces conda-managed files")
    for requirement, label in local_labels(request.requirements).items():
        if package is None or _requirement_name(requirement) == normalize(package):
            return local_label_hint(requirement, label, hermetic=request.hermetic) + (
                f" (looked in: {_sources(request)})")
    hint = "check the name and version, or the index"
    if request.credentials:  # a refused password often reads as "not found" too
        hint += " and its credentials"
    return f"{hint} (looked in: {_sources(request)})"


def _sources(request: PipRequest) -> str:
    """The indexes and find-links of a request, without credentials."""
    urls = [request.index_url or "PyPI", *request.extra_index_urls, *request.find_links]
    return ", ".join(strip_credentials(u) for u in urls)


def _requirement_name(requirement: str) -> str | None:
    match = _PIP_REQ_NAME.match(requirement)
    return normalize(match.group(1)) if match else None


def pip_packages(prefix: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Distributions in site-packages that conda did not install: name, version, installer."""
    managed = conda_managed_dists(prefix, records)
    try:
        site = site_packages(prefix)
    except BuildError:
        return []
    found = []
    for dist_info in sorted(site.glob("*.dist-info")):
        metadata = dist_info / "METADATA"
        if not metadata.exists():
            continue
        headers = HeaderParser().parsestr(metadata.read_text(errors="replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version or normalize(name) in managed:
            continue
        installer_file = dist_info / "INSTALLER"
        installer = installer_file.read_text().strip() if installer_file.exists() else ""
        found.append({"name": name, "version": version, "installer": installer})
    return sorted(found, key=lambda d: normalize(d["name"]))
