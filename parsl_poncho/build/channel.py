"""Seed a local conda channel with the running CPython (and pip, setuptools) as conda packages.

``seed_channel(dest)`` turns ``sys.base_prefix`` into a ``python`` conda package (trimmed,
stripped, relocatable RUNPATHs, text-prefix placeholders only) and the wheels bundled with
``ensurepip`` into ``noarch: python`` packages, then indexes the channel with py-rattler. A
marker file records the interpreter it was made from, so seeding again is a no-op.
See ../shared/notes/offline-conda.md for why each step is there.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from parsl_poncho.build._util import sha256_file
from parsl_poncho.errors import BuildError
from parsl_poncho.paths import default_channel_dir

#: Bump when the packages this module makes change shape; part of the seed fingerprint.
SEED_FORMAT_VERSION = 2

MARKER_NAME = ".parsl-poncho-seed.json"

# Parts of the interpreter prefix the env never needs (relative to lib/pythonX.Y).
_STDLIB_DROP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3/tests", "ctypes/test",
                "distutils/tests", "unittest/test", "sqlite3/test", "tkinter/test"}
_BIN_KEEP = re.compile(r"^(python[0-9.]*(-config)?|pydoc[0-9.]*|2to3(-[0-9.]+)?)$")
_GLIBC_RE = re.compile(rb"GLIBC_([0-9]+)\.([0-9]+)")
_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class _Pkg:
    """One file of a package being made: its path in the package and where its bytes come from."""

    rel: str
    src: Path | None  # None for a symlink
    link: str | None = None
    placeholder: str | None = None


def seed_channel(dest: Path | None = None, *, force: bool = False) -> Path:
    """Make or refresh a local conda channel holding this CPython, pip and setuptools.

    Cheap when ``dest`` was already seeded from this interpreter (a marker file is compared).

    :param dest: channel directory (default: ``paths.default_channel_dir()``).
    :param force: rebuild the packages even when the marker says they are current.
    :returns: the channel directory; pass it (or its ``file://`` URL) as a channel.
    :raises BuildError: the interpreter cannot be packaged (step ``"seed"``).

    >>> channel = seed_channel(Path("/tmp/chan"))  # doctest: +SKIP
    """
    dest = Path(dest) if dest is not None else default_channel_dir()
    dest = dest.expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    fingerprint = interpreter_fingerprint()
    marker = dest / MARKER_NAME
    if not force and _marker_matches(marker, fingerprint, dest):
        return dest
    with _flock(dest / ".seed.lock"):
        if not force and _marker_matches(marker, fingerprint, dest):
            return dest
        try:
            _seed(dest, fingerprint)
        except BuildError:
            raise
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            raise BuildError(
                f"Could not seed the local conda channel {str(dest)!r} from {sys.base_prefix!r}: "
                f"{exc}. Check free disk space and that strip/patchelf work.",
                step="seed",
                package="python",
            ) from exc
    return dest


def interpreter_fingerprint() -> dict[str, Any]:
    """What identifies the running interpreter's build (the marker compares this)."""
    base = Path(sys.base_prefix)
    exe = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    stat = exe.stat() if exe.exists() else None
    return {
        "format": SEED_FORMAT_VERSION,
        "base_prefix": str(base),
        "version": sys.version,
        "executable_mtime": stat.st_mtime if stat else None,
        "executable_size": stat.st_size if stat else None,
    }


def _marker_matches(marker: Path, fingerprint: dict[str, Any], dest: Path) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if recorded.get("fingerprint") != fingerprint:
        return False
    return all((dest / rel).exists() for rel in recorded.get("files", []))


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _seed(dest: Path, fingerprint: dict[str, Any]) -> None:
    subdir = current_subdir()
    (dest / subdir).mkdir(exist_ok=True)
    (dest / "noarch").mkdir(exist_ok=True)
    tag = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]
    files: list[str] = []
    with tempfile.TemporaryDirectory(prefix="seed-", dir=dest) as scratch:
        python_pkg = _make_python_package(Path(scratch), dest / subdir, subdir, tag)
        files.append(str(python_pkg.relative_to(dest)))
        for wheel in sorted(_bundled_wheels()):
            pkg = _make_noarch_package(wheel, Path(scratch), dest / "noarch", tag)
            files.append(str(pkg.relative_to(dest)))
    _remove_stale(dest, files)
    index_channel(dest)
    marker = {"fingerprint": fingerprint, "files": files, "seeded_at": time.time()}
    tmp = dest / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, dest / MARKER_NAME)


def _remove_stale(dest: Path, keep: list[str]) -> None:
    """Drop packages this module made earlier for another interpreter (same names, old tags)."""
    keep_set = set(keep)
    for sub in dest.iterdir():
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        for pkg in [*sub.glob("*_poncho.tar.bz2"), *sub.glob("*_poncho.conda")]:
            if str(pkg.relative_to(dest)) not in keep_set:
                pkg.unlink()


def index_channel(channel: Path) -> None:
    """Write repodata.json for every subdir of ``channel`` with py-rattler (no .zst, no shards)."""
    from parsl_poncho.build.conda import run_rattler_child

    result = run_rattler_child({"op": "index", "channel": str(channel)}, step="seed")
    if not result.get("ok"):
        raise BuildError(
            f"seed: indexing the channel {str(channel)!r} failed: {result.get('message')}",
            step="seed",
        )
    shutil.rmtree(channel / ".tmp", ignore_errors=True)


def current_subdir() -> str:
    """This host's conda subdir, e.g. ``linux-64``."""
    try:
        from parsl_poncho.spec import current_platform

        return current_platform()
    except (ImportError, NotImplementedError):  # spec.py not finished yet
        from rattler.platform import Subdir

        return str(Subdir.current())


# -- the python package ----------------------------------------------------------------------


def _make_python_package(scratch: Path, outdir: Path, subdir: str, tag: str) -> Path:
    base = Path(sys.base_prefix).resolve()
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stage = scratch / "python"
    _copy_interpreter(base, stage, pyver)
    _fix_config_script(stage / "bin" / f"python{pyver}-config", str(base))
    glibc = _relocate_elves(stage, pyver)
    entries = _collect_entries(stage, str(base))
    version = ".".join(str(p) for p in sys.version_info[:3])
    build = f"h{tag}_0_poncho"
    depends = [f"__glibc >={glibc[0]}.{glibc[1]}"] if glibc else []
    index = {
        "name": "python",
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": depends,
        "license": "Python-2.0",
        "platform": subdir.split("-")[0],
        "arch": _arch_of(subdir),
        "subdir": subdir,
        "timestamp": int(time.time() * 1000),
    }
    about = {"summary": f"CPython {version} from {base} (parsl-poncho channel seed)"}
    out = outdir / f"python-{version}-{build}.conda"
    return _write_package(stage, entries, index, about, None, out)


def _arch_of(subdir: str) -> str:
    tail = subdir.split("-", 1)[-1]
    return {"64": "x86_64", "32": "x86"}.get(tail, tail)


def _copy_interpreter(base: Path, stage: Path, pyver: str) -> None:
    """Copy the parts of ``base`` a python conda package needs, trimmed."""
    stdlib_rel = f"lib/python{pyver}"
    drops = {f"{stdlib_rel}/{d}" for d in _STDLIB_DROP}
    drops.add(f"{stdlib_rel}/site-packages")
    for root, dirs, files in os.walk(base):
        rel_root = os.path.relpath(root, base)
        rel_root = "" if rel_root == "." else rel_root
        kept_dirs = []
        for d in dirs:
            rel = f"{rel_root}/{d}" if rel_root else d
            if rel in drops or d == "__pycache__":
                continue
            if rel_root == "" and d not in ("bin", "include", "lib"):
                continue
            if rel_root == "lib" and d not in (f"python{pyver}", "pkgconfig"):
                continue
            if os.path.islink(os.path.join(root, d)):
                _copy_one(base, stage, rel)
                continue
            kept_dirs.append(d)
        dirs[:] = kept_dirs
        for name in files:
            rel = f"{rel_root}/{name}" if rel_root else name
            if rel_root == "":
                continue
            if rel_root == "bin" and not _BIN_KEEP.match(name):
                continue
            if name.endswith((".a", ".o", ".pyc", ".pyo")):
                continue
            _copy_one(base, stage, rel)
        pycache = os.path.join(root, "__pycache__")
        if os.path.isdir(pycache) and rel_root.startswith(stdlib_rel):
            _copy_pycs(Path(pycache), stage / rel_root / "__pycache__", set(files))
    (stage / stdlib_rel / "site-packages").mkdir(parents=True, exist_ok=True)
    readme = stage / stdlib_rel / "site-packages" / "README.txt"
    readme.write_text("This directory exists so that 3rd party packages can be installed here.\n")


def _copy_one(base: Path, stage: Path, rel: str) -> None:
    src = base / rel
    dst = stage / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        if os.path.isabs(target):
            target = os.path.relpath(os.path.realpath(src), src.parent.resolve())
        os.symlink(target, dst)
    else:
        shutil.copy2(src, dst)


def _copy_pycs(src_cache: Path, dst_cache: Path, sources: set[str]) -> None:
    """Ship the host's non-optimised .pyc for the sources kept (startup is 3x faster with them)."""
    tag = sys.implementation.cache_tag
    for pyc in src_cache.glob(f"*.{tag}.pyc"):
        stem = pyc.name[: -len(f".{tag}.pyc")]
        if f"{stem}.py" in sources:
            dst_cache.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pyc, dst_cache / pyc.name)


def _fix_config_script(script: Path, old_prefix: str) -> None:
    """conda-unpack skips bin/python*: make pythonX.Y-config find its prefix at run time."""
    if not script.exists() or script.is_symlink():
        return
    text = script.read_text()
    if "prefix_real=" not in text:
        return
    text = text.replace(f'prefix="{old_prefix}"', 'prefix="${prefix_real}"')
    text = text.replace(old_prefix, "${prefix_real}")
    script.write_text(text)


def _relocate_elves(stage: Path, pyver: str) -> tuple[int, int] | None:
    """Strip debug info, give each ELF file a $ORIGIN RUNPATH; return the highest GLIBC_x.y."""
    patchelf = _find_tool("patchelf")
    highest: tuple[int, int] | None = None
    for path in sorted(stage.rglob("*")):
        if path.is_symlink() or not path.is_file() or not _is_elf(path):
            continue
        rel = path.relative_to(stage).as_posix()
        os.chmod(path, path.stat().st_mode | 0o200)
        subprocess.run(["strip", "--strip-debug", str(path)], check=False, capture_output=True)
        runpath = _runpath_for(rel, pyver)
        if runpath is not None:
            subprocess.run([patchelf, "--set-rpath", runpath, str(path)], check=True,
                           capture_output=True)
        for major, minor in _GLIBC_RE.findall(path.read_bytes()):
            version = (int(major), int(minor))
            if highest is None or version > highest:
                highest = version
    return highest


def _runpath_for(rel: str, pyver: str) -> str | None:
    if rel.startswith("bin/"):
        return "$ORIGIN/../lib"
    if rel.startswith(f"lib/python{pyver}/lib-dynload/"):
        return "$ORIGIN/../.."
    if rel.startswith("lib/") and rel.count("/") == 1:
        return "$ORIGIN"
    return None


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == _ELF_MAGIC


def _find_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise BuildError(
            f"{name!r} not found: install it (pip install {name}) to seed the channel",
            step="seed",
            package=name,
        )
    return found


def _collect_entries(stage: Path, old_prefix: str) -> list[_Pkg]:
    """Every file and link of ``stage``; text files holding ``old_prefix`` get a placeholder."""
    needle = old_prefix.encode()
    entries: list[_Pkg] = []
    for root, dirs, files in os.walk(stage):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(stage).as_posix()
            if path.is_symlink():
                entries.append(_Pkg(rel, None, link=os.readlink(path)))
            elif path.is_file():
                placeholder = None
                if not rel.endswith(".pyc") and not _is_elf(path):
                    data = path.read_bytes()
                    if needle in data and b"\x00" not in data:
                        placeholder = old_prefix
                entries.append(_Pkg(rel, path, placeholder=placeholder))
    entries.sort(key=lambda e: e.rel)
    return entries


# -- noarch: python packages from wheels --------------------------------------------------------


def _bundled_wheels() -> list[Path]:
    """The pip and setuptools wheels ``ensurepip`` carries in the base interpreter's stdlib."""
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix,
                                            "installed_base": sys.base_prefix})["stdlib"])
    bundled = stdlib / "ensurepip" / "_bundled"
    return sorted(bundled.glob("*.whl"))


def _make_noarch_package(wheel: Path, scratch: Path, outdir: Path, tag: str) -> Path:
    name, version = wheel.name.split("-")[:2]
    stage = scratch / f"noarch-{name}"
    site = stage / "site-packages"
    site.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    dist_info = next(site.glob("*.dist-info"))
    (dist_info / "INSTALLER").write_text("conda\n")
    entry_points = _console_scripts(dist_info / "entry_points.txt")
    entries = _collect_entries(stage, "/nonexistent-prefix-placeholder")
    build = f"py_{tag}_poncho"
    index = {
        "name": name.lower(),
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": ["python >=3.7"],
        "license": "MIT",
        "noarch": "python",
        "subdir": "noarch",
        "timestamp": int(time.time() * 1000),
    }
    link = {"noarch": {"type": "python", "entry_points": entry_points},
            "package_metadata_version": 1}
    about = {"summary": f"{name} {version} from the wheel bundled with ensurepip"}
    out = outdir / f"{name.lower()}-{version}-{build}.conda"
    return _write_package(stage, entries, index, about, link, out)


def _console_scripts(entry_points_txt: Path) -> list[str]:
    if not entry_points_txt.exists():
        return []
    scripts: list[str] = []
    section = None
    for line in entry_points_txt.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and section == "console_scripts" and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            scripts.append(f"{key} = {value}")
    return scripts


# -- writing a .conda package (zstd frames of raw blocks: no compressor needed) -----------------

#: Zstandard frame magic number and the largest block a frame may carry.
_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_ZSTD_BLOCK = 128 * 1024
# Frame header descriptor 0 (no content size, no checksum, no dictionary) followed by a window
# descriptor of 2**17 bytes (exponent 7 -> windowLog 17), enough for 128 KiB raw blocks.
_ZSTD_HEADER = _ZSTD_MAGIC + bytes([0x00, 7 << 3])


def _write_package(stage: Path, entries: list[_Pkg], index: dict[str, Any], about: dict[str, Any],
                   link: dict[str, Any] | None, out: Path) -> Path:
    """Write ``out`` (``<name>-<version>-<build>.conda``): metadata, info and pkg tarballs.

    The tarballs are zstd frames made of raw (stored) blocks: valid zstd that every conda client
    reads, written without a zstd library and extracted at memory speed. Channels are local, so
    the bytes saved by compressing would only cost CPU on every cold install.
    """
    info = _info_files(stage, entries, index, about, link)
    stem = out.name[: -len(".conda")]
    tmp = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix="conda-pkg-", dir=out.parent) as scratch:
        info_tar = Path(scratch) / "info.tar"
        pkg_tar = Path(scratch) / "pkg.tar"
        with tarfile.open(info_tar, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in info.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                member.mtime = int(time.time())
                member.mode = 0o644
                tar.addfile(member, io.BytesIO(data))
        with tarfile.open(pkg_tar, "w", format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                tar.add(stage / entry.rel, arcname=entry.rel, recursive=False)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
            _add_zstd_raw(archive, f"pkg-{stem}.tar.zst", pkg_tar)
            _add_zstd_raw(archive, f"info-{stem}.tar.zst", info_tar)
    os.replace(tmp, out)
    return out


def _add_zstd_raw(archive: zipfile.ZipFile, name: str, source: Path) -> None:
    """Store ``source`` in ``archive`` as one zstd frame of raw blocks."""
    size = source.stat().st_size
    with open(source, "rb") as fin, archive.open(name, "w", force_zip64=True) as fout:
        fout.write(_ZSTD_HEADER)
        remaining = size
        while True:
            chunk = fin.read(_ZSTD_BLOCK)
            remaining -= len(chunk)
            last = 1 if remaining <= 0 else 0
            fout.write(((len(chunk) << 3) | last).to_bytes(3, "little"))  # block type 0: raw
            fout.write(chunk)
            if last:
                break


def _info_files(stage: Path, entries: list[_Pkg], index: dict[str, Any], about: dict[str, Any],
                link: dict[str, Any] | None) -> dict[str, bytes]:
    """The ``info/`` files of a package: index, about, paths, files, has_prefix, link."""
    paths = []
    has_prefix = []
    for entry in entries:
        if entry.src is None:
            paths.append({"_path": entry.rel, "path_type": "softlink"})
            continue
        item: dict[str, Any] = {
            "_path": entry.rel,
            "path_type": "hardlink",
            "sha256": sha256_file(entry.src),
            "size_in_bytes": entry.src.stat().st_size,
        }
        if entry.placeholder:
            item["file_mode"] = "text"
            item["prefix_placeholder"] = entry.placeholder
            has_prefix.append(f"{entry.placeholder} text {entry.rel}")
        paths.append(item)
    info: dict[str, bytes] = {
        "info/index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
        "info/about.json": json.dumps(about, indent=2).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=1).encode(),
        "info/files": "".join(f"{e.rel}\n" for e in entries).encode(),
    }
    if has_prefix:
        info["info/has_prefix"] = "".join(f"{line}\n" for line in has_prefix).encode()
    if link:
        info["info/link.json"] = json.dumps(link, indent=2).encode()
    return info
