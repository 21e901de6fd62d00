"""Data shipped in the env: git repositories and http(s) files, exposed as environment variables.

Each variable's data lives at ``<env>/share/parsl-poncho/data/<VAR>`` (a file, or a directory
for git and ``type: tar``), and ``<env>/etc/parsl-poncho/data.env`` lists ``VAR=RELPATH`` lines
(relative to the env root) that the worker shim exports.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import shutil
import ssl
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from parsl_poncho.build._util import ca_bundle, run_step
from parsl_poncho.errors import BuildError

DATA_DIR = "share/parsl-poncho/data"
DATA_ENV = "etc/parsl-poncho/data.env"

_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRANSPORT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*::")
#: Protocols git may use for a data clone; ext:: and fd:: are never among them.
GIT_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_DOWNLOAD_BLOCK = 1 << 20


def check_var(name: str) -> None:
    """Refuse a variable name that is not a shell identifier."""
    if not _VAR_RE.match(name):
        raise BuildError(
            f"data: {name!r} is not a valid environment variable name (letters, digits, _)",
            step="data",
            package=name,
        )


def check_git_source(var: str, remote: str, ref: str | None) -> None:
    """Refuse a remote or ref git could read as an option, or a transport-helper remote."""
    if remote.startswith("-") or (ref or "").startswith("-"):
        raise BuildError(
            f"git.{var}: remote {remote!r} / ref {ref!r} starts with '-' and would be read as a "
            "git option: refused; give a URL or path and a branch, tag or commit",
            step="data",
            package=var,
        )
    if _TRANSPORT_RE.match(remote):
        raise BuildError(
            f"git.{var}: remote {remote!r} uses a git transport helper "
            f"({remote.split('::', 1)[0]}::), which can run commands: refused; use an https, "
            "ssh, git or file URL",
            step="data",
            package=var,
        )
    if "\n" in remote or "\x00" in remote or (ref and ("\n" in ref or ".." in ref)):
        raise BuildError(
            f"git.{var}: remote {remote!r} or ref {ref!r} contains a newline, NUL or '..'",
            step="data",
            package=var,
        )
    # The same rules as spec validation (e.g. ssh://-oProxyCommand=... hosts), for Specs
    # constructed directly and never validated.
    from parsl_poncho.spec_checks import git_ref_error, git_remote_error

    problem = git_remote_error(remote) or (git_ref_error(ref) if ref else None)
    if problem:
        raise BuildError(
            f"git.{var}: remote {remote!r} / ref {ref!r} is refused: {problem}",
            step="data",
            package=var,
        )


def check_url(var: str, url: str) -> None:
    """Refuse an http entry whose URL is not http, https or file."""
    if not url.lower().startswith(("http://", "https://", "file://")):
        raise BuildError(
            f"http.{var}: url {url!r} is not http(s) or file: give an http or https URL",
            step="data",
            package=var,
        )


def git_env() -> dict[str, str]:
    """Environment for git: no prompts, only plain transports."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_ALLOW_PROTOCOL"] = GIT_ALLOWED_PROTOCOLS
    env.setdefault("GIT_ASKPASS", "true")
    return env


def git_command(*args: str) -> list[str]:
    """``git`` with transport helpers that run commands switched off."""
    return ["git", "-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", *args]


def clone_git(var: str, remote: str, ref: str | None, dest: Path, timeout: float | None) -> None:
    """Clone ``remote`` into ``dest`` and check out ``ref`` (detached) when given."""
    check_git_source(var, remote, ref)
    env = git_env()
    run_step(git_command("clone", "--quiet", "--", remote, str(dest)), step="data",
             env=env, timeout=timeout, package=var, what=f"git clone of {remote!r}")
    if ref and ref != "HEAD":
        commit = _resolve_ref(dest, ref, env)
        if commit is None:
            raise BuildError(
                f"git.{var}: ref {ref!r} not found in {remote!r}: give a branch, tag or commit "
                "that exists there",
                step="data",
                package=var,
            )
        run_step(git_command("-C", str(dest), "checkout", "--quiet", "--detach", commit),
                 step="data", env=env, timeout=timeout, package=var,
                 what=f"git checkout of {ref!r}")


def _resolve_ref(repo: Path, ref: str, env: Mapping[str, str]) -> str | None:
    for candidate in (ref, f"origin/{ref}", f"refs/tags/{ref}"):
        try:
            out = run_step(
                git_command("-C", str(repo), "rev-parse", "--verify", "--quiet",
                            "--end-of-options", f"{candidate}^{{commit}}"),
                step="data", env=env, what="git rev-parse",
            )
        except BuildError:
            continue
        if out.strip():
            return out.strip().splitlines()[-1]
    return None


def _ssl_context() -> ssl.SSLContext:
    bundle = ca_bundle()
    return ssl.create_default_context(cafile=bundle) if bundle else ssl.create_default_context()


def download(var: str, url: str, dest: Path, sha256: str | None, timeout: float | None) -> None:
    """Fetch ``url`` into ``dest`` (http, https or file); check sha256 when given."""
    check_url(var, url)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "parsl-poncho"})
        kwargs: dict[str, Any] = {"timeout": timeout or 300}
        if url.lower().startswith("https://"):
            kwargs["context"] = _ssl_context()
        received = 0
        with urllib.request.urlopen(request, **kwargs) as response, open(dest, "wb") as out:
            length = (response.headers.get("Content-Length") or "").strip()
            for block in iter(lambda: response.read(_DOWNLOAD_BLOCK), b""):
                digest.update(block)
                out.write(block)
                received += len(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BuildError(
            f"http.{var}: could not download {url!r}: {exc}. Check the URL and that it is "
            "reachable from this host",
            step="data",
            package=var,
        ) from exc
    if length.isdigit() and received != int(length):  # the connection dropped mid-body
        raise BuildError(
            f"http.{var}: download of {url!r} ended after {received} of {length} bytes (the "
            "connection was cut); retry, and give a sha256 in the spec to catch this always",
            step="data",
            package=var,
        )
    if sha256 and digest.hexdigest().lower() != sha256.lower():
        raise BuildError(
            f"http.{var}: sha256 mismatch for {url!r}: expected {sha256.lower()}, got "
            f"{digest.hexdigest()}. The file changed upstream or the spec's sha256 is wrong",
            step="data",
            package=var,
        )


def _decompress(var: str, compression: str | None, src: Path, dest: Path) -> None:
    openers = {"gzip": gzip.open, "gz": gzip.open, "bzip2": bz2.open, "bz2": bz2.open,
               "xz": lzma.open, "lzma": lzma.open}
    if not compression:
        os.replace(src, dest)
        return
    opener = openers.get(compression.lower())
    if opener is None:
        raise BuildError(
            f"http.{var}: unknown compression {compression!r}: use gzip, bzip2 or xz",
            step="data",
            package=var,
        )
    try:
        with opener(src, "rb") as fin, open(dest, "wb") as fout:  # type: ignore[operator]
            shutil.copyfileobj(fin, fout, _DOWNLOAD_BLOCK)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise BuildError(f"http.{var}: cannot decompress ({compression}): {exc}",
                         step="data", package=var) from exc
    src.unlink()


def _extract_tar(var: str, archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python without extraction filters: validate members ourselves
                for member in tar.getmembers():
                    target = (dest / member.name).resolve()
                    if not str(target).startswith(str(dest.resolve()) + os.sep) or (
                        member.issym() or member.islnk() or member.isdev()
                    ):
                        raise tarfile.TarError(f"unsafe member {member.name!r}")
                tar.extractall(dest)  # noqa: S202 - members validated above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BuildError(
            f"http.{var}: cannot unpack {archive.name!r} as a tar archive: {exc}",
            step="data",
            package=var,
        ) from exc
    archive.unlink()


def fetch_http(var: str, item: Any, dest: Path, scratch: Path, timeout: float | None) -> None:
    """Download one ``http`` entry to ``dest``: a file, or a directory for ``type: tar``."""
    raw = scratch / f"http-{var}.download"
    download(var, item.url, raw, item.sha256, timeout)
    if (item.type or "file") == "tar":
        _extract_tar(var, raw, dest)  # tarfile reads any compression itself
    elif item.type in (None, "file"):
        _decompress(var, item.compression, raw, dest)
    else:
        raise BuildError(f"http.{var}: unknown type {item.type!r}: use 'file' or 'tar'",
                         step="data", package=var)


def add_data(
    prefix: Path,
    git: Mapping[str, Any],
    http: Mapping[str, Any],
    scratch: Path,
    timeout: float | None = None,
) -> dict[str, str]:
    """Fetch every git/http entry into the env and write data.env; return {VAR: RELPATH}."""
    variables: dict[str, str] = {}
    if not git and not http:
        return variables
    data_dir = prefix / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    for var in sorted(git):
        check_var(var)
        item = git[var]
        clone_git(var, item.remote, item.ref, data_dir / var, timeout)
        variables[var] = f"{DATA_DIR}/{var}"
    for var in sorted(http):
        check_var(var)
        if var in variables:
            raise BuildError(f"data: {var!r} is both a git and an http entry: rename one",
                             step="data", package=var)
        fetch_http(var, http[var], data_dir / var, scratch, timeout)
        variables[var] = f"{DATA_DIR}/{var}"
    write_data_env(prefix, variables)
    return variables


def write_data_env(prefix: Path, variables: Mapping[str, str]) -> Path:
    """Write ``<env>/etc/parsl-poncho/data.env`` with one ``NAME=RELPATH`` line per variable."""
    path = prefix / DATA_ENV
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}={rel}\n" for name, rel in sorted(variables.items())))
    return path
