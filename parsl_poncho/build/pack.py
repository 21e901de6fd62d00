"""Pack an env directory with conda-pack into a tarball, written atomically."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from parsl_poncho.build._util import sha256_file, tail
from parsl_poncho.errors import BuildError

#: gzip level: 4 packs about twice as fast as 9 for a few percent more bytes.
DEFAULT_COMPRESS_LEVEL = 4

_TEMP_DIR = threading.local()


class _TempfileBesideOutput:
    """Stands in for ``tempfile`` inside conda_pack.core, whose pack() writes the whole archive
    to ``tempfile.mkstemp()`` in $TMPDIR and then copies it over: a build killed meanwhile (or a
    full disk at the copy) left a partial tarball in /tmp forever. Here the temp file goes beside
    the output (same filesystem: a rename; inside the store's staging dir, which is cleaned)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    def mkstemp(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        where = getattr(_TEMP_DIR, "path", None)
        if where is not None and "dir" not in kwargs and len(args) < 3:
            kwargs["dir"] = where
            kwargs.setdefault("prefix", ".conda-pack-")
        return tempfile.mkstemp(*args, **kwargs)


def pack_env(
    prefix: Path,
    output: Path,
    *,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    n_threads: int = 1,
    on_missing_cache: str = "raise",
    ignore_missing_files: bool = False,
    ignore_editable_packages: bool = False,
) -> tuple[int, str]:
    """conda-pack ``prefix`` to ``output`` (tar.gz, mode 0644) via temp + os.replace.

    ``n_threads`` 0 means up to 2 threads, as the CPUs allow. One is the default: it leaves a
    core to concurrent builds and tasks; 2 threads packed ~15% faster in bench/build.py on the
    2-core host (interleaved medians).

    :returns: (size in bytes, sha256 hex) of the tarball.
    :raises BuildError: step ``"pack"`` with conda-pack's explanation.
    """
    import conda_pack

    if n_threads <= 0:
        n_threads = max(1, min(2, os.cpu_count() or 1))
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    os.close(fd)
    os.unlink(tmp_name)  # conda-pack refuses to overwrite without force; start clean
    tmp = Path(tmp_name)
    history = Path(prefix) / "conda-meta" / "history"
    if (Path(prefix) / "conda-meta").is_dir() and not history.exists():
        history.touch()  # conda-pack 0.9.2 takes every member's mtime from it (None otherwise)
    import conda_pack.core

    if not isinstance(conda_pack.core.tempfile, _TempfileBesideOutput):
        conda_pack.core.tempfile = _TempfileBesideOutput()  # type: ignore[assignment]
    _TEMP_DIR.path = str(output.parent)
    try:
        env = conda_pack.CondaEnv.from_prefix(
            str(prefix),
            on_missing_cache=on_missing_cache,
            ignore_missing_files=ignore_missing_files,
            ignore_editable_packages=ignore_editable_packages,
        )
        env.pack(
            output=str(tmp),
            format="tar.gz",
            compress_level=compress_level,
            n_threads=n_threads,
            verbose=False,
            force=True,
        )
        os.chmod(tmp, 0o644)
        size = tmp.stat().st_size
        digest = sha256_file(tmp)
        os.replace(tmp, output)
    except conda_pack.CondaPackException as exc:
        raise BuildError(
            f"pack: conda-pack refused {str(prefix)!r}: {exc}",
            step="pack",
            log_tail=tail(str(exc)),
        ) from exc
    except OSError as exc:
        raise BuildError(
            f"pack: packing {str(prefix)!r} into {str(output)!r} failed: {exc}", step="pack"
        ) from exc
    except Exception as exc:  # conda-pack has failures outside its exception class
        raise BuildError(
            f"pack: conda-pack failed on {str(prefix)!r}: {type(exc).__name__}: {exc}",
            step="pack",
            log_tail=tail(str(exc)),
        ) from exc
    finally:
        _TEMP_DIR.path = None
        if tmp.exists():
            tmp.unlink()
    return size, digest
