"""Helpers for the worker shim tests: handcrafted env tarballs and a poncho_run runner."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from parsl_poncho.shim import poncho_run_path

SHELL = shutil.which("dash") or "/bin/sh"

# A fake conda env: bin/python runs shell scripts, so the shim's `bin/python bin/conda-unpack`
# runs this conda-unpack, which counts itself, can stall or fail on demand, and writes the
# prefix it was run at (as the real one rewrites prefixes to its own location).
FAKE_PYTHON = '#!/bin/sh\nexec /bin/sh "$@"\n'
FAKE_CONDA_UNPACK = """\
here=$(cd "$(dirname "$0")/.." && pwd)
echo "$$" >> "${FAKE_COUNTER:-/dev/null}"
if [ -n "$FAKE_STARTED" ]; then : > "$FAKE_STARTED"; fi
sleep "${FAKE_SLEEP:-0}"
if [ -n "$FAKE_FAIL" ]; then echo "relocation went wrong" >&2; exit 3; fi
echo "$here" > "$here/prefix.txt"
"""


@dataclass
class Member:
    """One archive member: regular file (default), "dir", "symlink", "hardlink" or "chardev"."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""
    mode: int = 0o644


@dataclass
class FakeEnv:
    """The members of a small relocatable env tarball (no Python needed)."""

    data_env: str | None = "DATA_DIR=share/data\n"
    extra: list[Member] = field(default_factory=list)
    filler_bytes: int = 0

    def members(self) -> list[Member]:
        members = [
            Member("bin", kind="dir", mode=0o755),
            Member("bin/python", FAKE_PYTHON.encode(), mode=0o755),
            Member("bin/python3", kind="symlink", target="python"),
            Member("bin/conda-unpack", FAKE_CONDA_UNPACK.encode(), mode=0o755),
            Member("share/data/hello.txt", b"hello\n"),
            Member("lib/python-link", kind="symlink", target="../bin/python"),
        ]
        if self.data_env is not None:
            members.append(Member("etc/parsl-poncho/data.env", self.data_env.encode()))
        if self.filler_bytes:
            members.append(Member("share/filler.bin", os.urandom(self.filler_bytes)))
        return members + list(self.extra)


def write_tarball(path: Path, members: list[Member], *, compress: bool = True) -> Path:
    """Write ``members`` as a tar(.gz) at ``path``, names exactly as given (unsafe ones too)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mode = m.mode
            info.mtime = 1_700_000_000
            if m.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif m.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = m.target
                tar.addfile(info)
            elif m.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = m.target
                tar.addfile(info)
            elif m.kind == "chardev":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
            else:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    raw = buf.getvalue()
    if compress:
        import gzip

        raw = gzip.compress(raw, compresslevel=1)
    path.write_bytes(raw)
    return path


def make_env_tarball(path: Path, env: FakeEnv | None = None) -> Path:
    """A fake env tarball at ``path`` (name it env-<something>.tar.gz)."""
    return write_tarball(path, (env or FakeEnv()).members())


@dataclass
class ShimRunner:
    """Runs poncho_run with a private cache and the fake conda-unpack's counter."""

    workdir: Path

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    @property
    def counter(self) -> Path:
        return self.workdir / "unpack-count"

    def unpack_count(self) -> int:
        if not self.counter.exists():
            return 0
        return len(self.counter.read_text().split())

    def environ(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PARSL_PONCHO_WORKER_CACHE_MAX", None)
        env.update(PARSL_PONCHO_WORKER_CACHE=str(self.cache), FAKE_COUNTER=str(self.counter))
        env.update(extra)
        return env

    def argv(self, *args: str | Path) -> list[str]:
        return [SHELL, str(poncho_run_path()), *map(str, args)]

    def run(
        self, *args: str | Path, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.environ(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def popen(self, *args: str | Path, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.environ(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.workdir,
            start_new_session=True,
        )

    def leftovers(self) -> list[str]:
        """Names in the cache that only an unfinished unpack leaves behind."""
        if not self.cache.exists():
            return []
        marks = (".partial.", ".trash.", ".lock", ".stale.")
        return sorted(p.name for p in self.cache.iterdir() if any(m in p.name for m in marks))
