"""The pip part of a build: install PEP 508 requirements into the env with uv (else pip).

Hermetic: the host's pip/uv configuration (config files, PIP_*/UV_* variables, user site) is
ignored, but the system CA bundle is kept so TLS works behind an intercepting proxy. Packages
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
from typing import Any, Literal, Sequence

from parsl_poncho.build._util import ca_bundle, hermetic_env, run_step, site_packages
from parsl_poncho.errors import BuildError

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
    cache_dir: Path | None = None
    timeout: float | None = None
    compile_bytecode: bool = True


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
        cmd = [python, "-m", "pip", "install", "--isolated", "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location"]
        if not request.compile_bytecode:
            cmd.append("--no-compile")
        if request.cache_dir is not None:
            cmd += ["--cache-dir", str(request.cache_dir / "pip")]
        bundle = ca_bundle()
        if bundle:
            cmd += ["--cert", bundle]
    if request.index_url:
        cmd += ["--index-url", request.index_url]
    for url in request.extra_index_urls:
        cmd += ["--extra-index-url", url]
    for link in request.find_links:
        cmd += ["--find-links", link]
    if constraints is not None:
        cmd += ["--constraint", str(constraints)]
    return cmd + ["--", *request.requirements] if installer == "pip" else cmd + list(
        request.requirements
    )


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
        run_step(cmd, step="pip", env=hermetic_env(), timeout=request.timeout,
                 what=f"{tool} install")
    except BuildError as exc:
        raise pip_error(exc, tool, request, managed) from exc
    return tool


def pip_error(
    exc: BuildError, tool: str, request: PipRequest, managed: dict[str, str]
) -> BuildError:
    """A BuildError naming the requirement pip/uv could not install, when it can be found."""
    log = exc.log_tail
    package = None
    for pattern in (_PIP_NOT_FOUND, _UV_NOT_FOUND, _UV_NO_VERSION, _UV_NOT_FOUND_ANY):
        match = pattern.search(log)
        if match:
            package = match.group(1).rstrip(".,")
            break
    if package is None:
        names = [_requirement_name(r) for r in request.requirements]
        package = next((n for n in names if n and n in log), None)
    hint = "Check the name and version on the index"
    if package and normalize(package) in managed:
        hint = (f"{package} is installed by conda ({managed[normalize(package)]}): pin that "
                "version or move it to the conda part; pip never replaces conda-managed files")
    elif request.index_url or request.find_links:
        hint += " (index/find-links in use: " + ", ".join(
            [u for u in [request.index_url, *request.find_links] if u]
        ) + ")"
    what = f" {package!r}" if package else ""
    return BuildError(
        f"pip: {tool} could not install{what}: {hint}; see the log tail",
        step="pip",
        package=package,
        log_tail=log,
    )


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
