"""`poncho_package_create SPEC OUT.tar.gz`: build (or pack) a relocatable conda env tarball.

Compatible with cctools' command (SPEC may be a PONCHO JSON file, ``-`` for stdin, a conda
environment directory or a conda environment name; ``--conda-executable``, ``--no-micromamba``,
``--ignore-editable-packages``), plus ``--channel``, ``--offline``, ``--cache-dir``, ``-q`` and
``--json``. Also accepts a conda ``environment.yml`` or a pip ``requirements.txt``.

Exit status: 0 built; 1 the spec is invalid or the build failed (stderr says which step and
package, with the log tail); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from parsl_poncho.errors import BuildError, PonchoError

_SOLVER_NAMES = ("conda", "mamba", "micromamba")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (cctools' arguments first, then ours)."""
    parser = argparse.ArgumentParser(
        prog="poncho_package_create",
        description="Create a packed environment from a spec, a conda environment name, or a "
        "conda directory.",
    )
    parser.add_argument("spec", help="a spec file (PONCHO JSON, environment.yml, "
                        "requirements.txt), - for stdin, a conda environment directory or name")
    parser.add_argument("output", help="write the conda-pack tarball here (.tar.gz)")
    parser.add_argument("--conda-executable", metavar="PATH",
                        help="solve and install with this conda/mamba/micromamba executable "
                        "instead of py-rattler")
    parser.add_argument("--no-micromamba", action="store_true",
                        help="accepted for compatibility: micromamba is never downloaded")
    parser.add_argument("--ignore-editable-packages", action="store_true",
                        help="when packing an env directory, skip conda-pack's editable check")
    parser.add_argument("--channel", "-c", action="append", default=[], metavar="CHANNEL",
                        help="extra conda channel searched before the spec's (name, URL or "
                        "directory; repeatable)")
    parser.add_argument("--override-channels", action="store_true",
                        help="use only the --channel channels, not the spec's")
    parser.add_argument("--offline", action="store_true",
                        help="seed the default local channel from this Python and build only "
                        "from it (no conda channel needed)")
    parser.add_argument("--solver", choices=("rattler", *_SOLVER_NAMES),
                        help="conda backend (default: rattler, or the --conda-executable kind)")
    parser.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto",
                        help="pip part installer (default: uv when installed, else pip)")
    parser.add_argument("--hermetic", action="store_true",
                        help="ignore this host's pip and uv configuration (by default the pip "
                        "part also looks where `pip install` looks here: index URLs, "
                        "find-links, trusted hosts)")
    parser.add_argument("--index-url", help="pip index URL (overrides the spec's)")
    parser.add_argument("--extra-index-url", action="append", default=[], metavar="URL")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL")
    parser.add_argument("--cache-dir", type=Path,
                        help="package caches and scratch space (default: $PARSL_PONCHO_CACHE "
                        "or ~/.cache/parsl-poncho)")
    parser.add_argument("--compress-level", type=int, default=4, choices=range(0, 10),
                        metavar="0-9", help="gzip level (default 4)")
    parser.add_argument("--manifest", type=Path, metavar="PATH",
                        help="where to write the manifest (default: OUTPUT with .json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--json", action="store_true",
                        help="print a machine-readable summary (the manifest) on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        manifest = run(args)
    except BuildError as exc:
        where = ", ".join(
            f"{k}={v}" for k, v in (("step", exc.step), ("package", exc.package)) if v
        )
        print(f"poncho_package_create: error: {exc}" + (f" [{where}]" if where else ""),
              file=sys.stderr)
        if exc.log_tail:
            print("---- log tail ----\n" + exc.log_tail, file=sys.stderr)
        return 1
    except PonchoError as exc:
        print(f"poncho_package_create: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    elif not args.quiet:
        print(f"{args.output}: {manifest['size']} bytes, sha256 {manifest['sha256']}",
              file=sys.stderr)
    return 0


def manifest_path_for(output: Path) -> Path:
    """``env.tar.gz`` -> ``env.json`` beside it."""
    name = output.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_name(name + ".json")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build or pack as ``args`` say; write the manifest; return it as a dict."""
    from parsl_poncho.build import pack_existing_env, write_manifest
    from parsl_poncho.build.progress import quiet_progress

    output = Path(args.output).expanduser().absolute()
    progress = quiet_progress if args.quiet or args.json else _stderr_progress
    env_dir = _conda_env_dir(args)
    if env_dir is not None:
        manifest = pack_existing_env(env_dir, output, compress_level=args.compress_level,
                                     progress=progress,
                                     ignore_editable_packages=args.ignore_editable_packages)
    else:
        from parsl_poncho.build import build_env
        from parsl_poncho.pip_sources import PipSources

        sources = PipSources(host_config=not args.hermetic).resolve()
        spec = sources.apply_to(_load_spec(args.spec))
        manifest = build_env(spec, output, options=_options(args, sources), progress=progress)
    write_manifest(manifest, args.manifest or manifest_path_for(output))
    return manifest.to_dict()


def _stderr_progress(line: str) -> None:
    print(f"poncho_package_create: {line}", file=sys.stderr, flush=True)


def _options(args: argparse.Namespace, sources: Any = None) -> Any:
    from parsl_poncho.build import BuildOptions, seed_channel

    solver = args.solver
    if args.conda_executable and not solver:
        base = os.path.basename(args.conda_executable)
        solver = next((n for n in ("micromamba", "mamba", "conda") if n in base), "conda")
    extra = list(args.channel)
    channels = None
    if args.offline:
        seeded = seed_channel(Path(args.cache_dir) / "channel" if args.cache_dir else None)
        extra = [*extra, str(seeded)]
        channels = ()
    elif args.override_channels:
        channels = ()
    return BuildOptions(
        solver=solver or "rattler",
        executable=args.conda_executable,
        channels=channels,
        extra_channels=tuple(extra),
        installer=args.installer,
        index_url=args.index_url,
        extra_index_urls=tuple(args.extra_index_url),
        find_links=tuple(args.find_links),
        cache_dir=args.cache_dir,
        compress_level=args.compress_level,
        pip_sources=sources,
    )


def _load_spec(source: str) -> Any:
    from parsl_poncho.spec import Spec, decode_json

    if source == "-":
        text = sys.stdin.read()
        try:
            data = decode_json(text, source="<stdin>")
        except json.JSONDecodeError as exc:
            raise BuildError(f"stdin is not a JSON spec: {exc}", step="spec") from exc
        return Spec.from_dict(data, source="<stdin>")
    return Spec.from_file(source)


def _conda_env_dir(args: argparse.Namespace) -> Path | None:
    """The env directory SPEC names (a directory, or a conda env name), else None."""
    source = args.spec
    if source == "-":
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or os.sep in source or "." in path.name:
        return None  # a spec file (missing files are reported by the spec loader)
    return _env_dir_by_name(source, args.conda_executable)


def _env_dir_by_name(name: str, executable: str | None) -> Path:
    conda = executable or os.environ.get("CONDA_EXE") or shutil.which("conda")
    if not conda:
        raise BuildError(
            f"{name!r} is not a file or directory, and no conda is installed to look it up as an "
            "environment name: give a spec file or an env directory",
            step="spec",
        )
    try:
        out = subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True,
                             check=True, timeout=120).stdout
        envs = json.loads(out).get("envs", [])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise BuildError(f"cannot list conda environments with {conda!r}: {exc}",
                         step="spec") from exc
    for env in envs:
        if Path(env).name == name:
            return Path(env)
    raise BuildError(
        f"no conda environment named {name!r} ({conda} env list): check the spelling",
        step="spec",
    )


if __name__ == "__main__":
    sys.exit(main())
