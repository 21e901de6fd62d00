"""Build a spec into a relocatable conda-pack tarball: conda → pip → data → code → pack.

>>> from parsl_poncho.build import build_env, BuildOptions, seed_channel
>>> channel = seed_channel()                                            # doctest: +SKIP
>>> manifest = build_env(spec, Path("env.tar.gz"),
...                      options=BuildOptions(channels=(str(channel),)))  # doctest: +SKIP
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from parsl_poncho.build.channel import current_subdir, seed_channel
from parsl_poncho.build.code import add_local_code
from parsl_poncho.build.conda import (
    CondaRequest,
    conda_records,
    lock_entries,
    make_backend,
    resolve_channels,
    spec_name,
)
from parsl_poncho.build.data import add_data, check_git_source, check_url, check_var
from parsl_poncho.build.manifest import Manifest, spec_to_dict, tool_versions, write_manifest
from parsl_poncho.build.pack import DEFAULT_COMPRESS_LEVEL, pack_env
from parsl_poncho.build.pip import Installer, PipRequest, find_uv, install_pip, pip_packages
from parsl_poncho.build.progress import Progress, ProgressCallback
from parsl_poncho.build.scratch import scratch_dir
from parsl_poncho.errors import BuildError
from parsl_poncho.paths import default_cache_dir
from parsl_poncho.pip_sources import strip_credentials, with_credentials

if TYPE_CHECKING:
    from parsl_poncho.pip_sources import ResolvedSources

__all__ = [
    "BuildOptions",
    "Manifest",
    "build_env",
    "pack_existing_env",
    "seed_channel",
    "write_manifest",
]

Solver = Literal["rattler", "conda", "mamba", "micromamba"]

PHASES = ("solve", "install", "pip", "data", "code", "pack")


@dataclass(frozen=True)
class BuildOptions:
    """How to build (never *what*: that is the Spec). Safe defaults throughout.

    :param solver: "rattler" (default, needs no conda), or "conda" / "mamba" / "micromamba"
        to drive that executable (``executable`` = its path, default: found on PATH).
    :param channels: replace the spec's channels (names, URLs, file:// URLs or directories).
    :param extra_channels: searched before the spec's (or ``channels``) — e.g. a seeded local
        channel (``seed_channel()``).
    :param installer: pip part installer: "auto" (uv if installed, else pip), "uv" or "pip".
    :param index_url / extra_index_urls / find_links: override the spec's pip_options
        (extra_index_urls and find_links are added to the spec's).
    :param platform: conda subdir to build for (default: this host's).
    :param workdir: where scratch build dirs go (default: ``<cache_dir>/tmp``).
    :param cache_dir: rattler package/repodata caches and pip/uv caches
        (default: ``paths.default_cache_dir()``).
    :param compress_level: gzip level of the tarball (default 4).
    :param n_threads: conda-pack compression threads (default 1; 0: up to 2, as CPUs allow).
    :param compile_bytecode: pip part writes .pyc files (as pip does by default): workers then
        import without compiling; off saves build time (numpy: ~1.2 s).
    :param timeout: seconds allowed to each subprocess (solver executable, pip, git, download).
    :param keep_workdir: keep the scratch dir after the build (debugging).
    :param pip_sources: the resolved pip sources the spec's pip options came from: their
        credentials (which specs never hold) and whether the build is hermetic. Not part of
        the options' equality or repr.
    """

    solver: Solver = "rattler"
    executable: str | None = None
    channels: tuple[str, ...] | None = None
    extra_channels: tuple[str, ...] = ()
    installer: Installer = "auto"
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    platform: str | None = None
    workdir: Path | None = None
    cache_dir: Path | None = None
    compress_level: int = DEFAULT_COMPRESS_LEVEL
    n_threads: int = 1
    compile_bytecode: bool = True
    timeout: float | None = 1800.0
    keep_workdir: bool = False
    pip_sources: ResolvedSources | None = field(default=None, compare=False, repr=False)


def conda_specs_for(spec: Any, needs_pip: bool) -> list[str]:
    """The spec's match specs, plus ``python`` when pip packages or local code need it."""
    specs = [str(s) for s in spec.conda]
    names = {spec_name(s) for s in specs}
    if (spec.pip or spec.local or needs_pip) and "python" not in names:
        specs.append("python")
    if needs_pip and "pip" not in names:
        specs.append("pip")
    return specs


def channels_for(spec: Any, options: BuildOptions) -> list[str]:
    """Channel URLs for a build: extra channels first, then options.channels or the spec's."""
    base = list(options.channels) if options.channels is not None else list(spec.channels)
    return resolve_channels([*options.extra_channels, *base])


def build_env(
    spec: Any,
    output: Path,
    *,
    options: BuildOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Build ``spec`` into the conda-pack tarball ``output`` and return its Manifest.

    The env is built in a scratch directory that is removed afterwards (also on failure); the
    tarball appears at ``output`` only when complete (temp file + os.replace).

    :raises BuildError: with ``step`` (solve, install, pip, data, code, pack), ``package`` when
        one is to blame, and ``log_tail``.
    """
    options = options or BuildOptions()
    output = Path(output).absolute()
    check_data_sources(spec)
    cache_dir = Path(options.cache_dir or default_cache_dir()).expanduser().absolute()
    workdir = Path(options.workdir).expanduser() if options.workdir else cache_dir / "tmp"
    report = Progress(progress, phases=len(PHASES) - 1)
    started = time.time()
    with scratch_dir(workdir, keep=options.keep_workdir) as scratch:
        return _build_in(spec, output, options, cache_dir, scratch, report, started)


def check_data_sources(spec: Any) -> None:
    """Refuse unsafe git remotes/refs, bad variable names and non-http URLs before any work."""
    for var, item in spec.git.items():
        check_var(var)
        check_git_source(var, item.remote, item.ref)
    for var, item in spec.http.items():
        check_var(var)
        check_url(var, item.url)


def _build_in(
    spec: Any,
    output: Path,
    options: BuildOptions,
    cache_dir: Path,
    scratch: Path,
    report: Progress,
    started: float,
) -> Manifest:
    prefix = scratch / "env"
    platform = options.platform or current_subdir()
    installer_tool = "pip" if options.installer == "pip" or not find_uv() else "uv"
    needs_pip = bool(spec.pip) and installer_tool == "pip"
    request = CondaRequest(
        prefix=prefix,
        specs=conda_specs_for(spec, needs_pip),
        channels=channels_for(spec, options),
        platform=platform,
        cache_dir=cache_dir / "conda",
        timeout=options.timeout,
    )
    if platform != current_subdir() and (spec.pip or spec.local):
        raise BuildError(
            f"cannot build for {platform!r} on {current_subdir()!r} with pip packages or local "
            f"code (the env's Python must run here): build on a {platform} host",
            step="solve",
        )
    backend = make_backend(options.solver, options.executable)
    _conda_phase(backend, request, report)
    records = conda_records(prefix)
    pip_request = _pip_request(spec, options, prefix, cache_dir)
    with report.phase("pip", f"{len(pip_request.requirements)} requirement(s)"):
        install_pip(pip_request, records, installer=options.installer, scratch=scratch)
    with report.phase("data", f"{len(spec.git)} git, {len(spec.http)} http"):
        variables = add_data(prefix, spec.git, spec.http, scratch, options.timeout)
    with report.phase("code", f"{len(spec.local)} local module(s)"):
        add_local_code(prefix, spec.local)
    lock = {"conda": lock_entries(records), "pip": pip_packages(prefix, records)}
    write_env_record(prefix, spec, lock)
    with report.phase("pack", output.name):
        size, digest = pack_env(prefix, output, compress_level=options.compress_level,
                                n_threads=options.n_threads)
    return Manifest(
        spec=spec_to_dict(spec),
        hash=_spec_hash(spec, platform),
        platform=platform,
        tarball=output.name,
        size=size,
        sha256=digest,
        lock=lock,
        data=variables,
        phases=dict(report.seconds),
        tools=tool_versions(solver=_solver_version(options), installer=_installer_version(
            installer_tool)),
        created=started,
    )


def write_env_record(prefix: Path, spec: Any, lock: dict[str, Any]) -> Path:
    """Write ``<env>/etc/parsl-poncho/env.json`` (spec + lock) so a shipped env describes itself."""
    import json

    path = prefix / "etc" / "parsl-poncho" / "env.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec_to_dict(spec), "lock": lock}, indent=1,
                               sort_keys=True) + "\n")
    return path


def _conda_phase(backend: Any, request: CondaRequest, report: Progress) -> None:
    detail = f"{len(request.specs)} spec(s) from {len(request.channels)} channel(s)"
    with report.phase("solve", f"{detail} with {backend.name} (+ install)"):
        phases = backend.create(request) or {}
    # the backend knows how its time split between solving and installing
    total = report.seconds.pop("solve")
    install = min(float(phases.get("install", 0.0)), total)
    report.seconds["solve"] = total - install
    report.seconds["install"] = install
    report.say(f"solve {total - install:.2f} s, install {install:.2f} s")


def _pip_request(spec: Any, options: BuildOptions, prefix: Path, cache_dir: Path) -> PipRequest:
    pip_options = spec.pip_options
    credentials = dict(options.pip_sources.credentials) if options.pip_sources else {}
    index = options.index_url or pip_options.index_url
    for url in (index or "", *options.extra_index_urls, *options.find_links):
        if strip_credentials(url) != url:  # given in options: scrub its secret from output too
            credentials[strip_credentials(url)] = url
    return PipRequest(
        prefix=prefix,
        requirements=[str(r) for r in spec.pip],
        index_url=with_credentials(index, credentials) if index else None,
        extra_index_urls=[with_credentials(u, credentials) for u in
                          (*pip_options.extra_index_urls, *options.extra_index_urls)],
        find_links=[with_credentials(u, credentials) for u in
                    (*pip_options.find_links, *options.find_links)],
        trusted_hosts=list(pip_options.trusted_hosts),
        credentials=credentials,
        hermetic=bool(options.pip_sources and options.pip_sources.hermetic),
        cache_dir=cache_dir,
        timeout=options.timeout,
        compile_bytecode=options.compile_bytecode,
    )


def _spec_hash(spec: Any, platform: str) -> str | None:
    try:
        return str(spec.hash(platform=platform))
    except NotImplementedError:
        return None


def _solver_version(options: BuildOptions) -> str:
    if options.solver == "rattler":
        return f"rattler {tool_versions().get('py-rattler', 'unknown')}"
    return options.solver


def _installer_version(tool: str) -> str:
    if tool == "uv":
        uv = find_uv()
        try:
            out = subprocess.run([str(uv), "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        return out or "uv"
    return "pip (in env)"


def pack_existing_env(
    prefix: Path,
    output: Path,
    *,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    n_threads: int = 1,
    progress: ProgressCallback | None = None,
    ignore_editable_packages: bool = False,
) -> Manifest:
    """Pack an existing conda env directory (``poncho_package_create ENVDIR OUT``).

    Like cctools' poncho, files missing from conda's records are tolerated.
    """
    prefix = Path(prefix).expanduser().absolute()
    if not (prefix / "conda-meta").is_dir():
        raise BuildError(
            f"{str(prefix)!r} is not a conda environment (no conda-meta/): give an env directory "
            "or a spec file",
            step="pack",
        )
    report = Progress(progress, phases=1)
    records = conda_records(prefix)
    lock = {"conda": lock_entries(records), "pip": pip_packages(prefix, records)}
    with report.phase("pack", Path(output).name):
        size, digest = pack_env(prefix, Path(output), compress_level=compress_level,
                                n_threads=n_threads, on_missing_cache="ignore",
                                ignore_missing_files=True,
                                ignore_editable_packages=ignore_editable_packages)
    return Manifest(
        spec={}, hash=None, platform=current_subdir(), tarball=Path(output).name, size=size,
        sha256=digest, lock=lock, phases=dict(report.seconds), tools=tool_versions(),
        created=time.time(),
    )


