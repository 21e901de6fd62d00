"""Pack local code (LocalCode entries) into a code layer: one importable directory as a .tar.gz.

The tarball's root is what goes on ``PYTHONPATH`` on a worker (``helper.py``,
``mypkg/__init__.py``, ...), holding exactly the files :func:`~parsl_poncho.codehash.
list_code_files` lists, as the env build's copy into site-packages does
(:mod:`parsl_poncho.build.code`), checked against each entry's content hash. Kept out of
``parsl_poncho.build`` on purpose: importing that package (solvers, installers) costs more than
packing a layer, which must stay well under half a second.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Sequence

from parsl_poncho.codehash import copy_checked
from parsl_poncho.errors import BuildError

#: Every member gets this mtime (2000-01-01), so equal code packs to equal bytes.
LAYER_MTIME = 946684800


def pack_code_layer(local: Sequence[Any], output: Path) -> list[str]:
    """Write the code layer of ``local`` to ``output``; return the names packed.

    Members are sorted, owned by 0:0, mode 0644/0755, with fixed times: the same code always
    gives the same bytes. The files are first copied to a scratch directory beside ``output``
    and the copies hashed, so what is packed is what was checked.

    :raises BuildError: (step "code", package = the name) a name that is not importable, given
        twice, a source that is missing or unreadable, content that no longer matches the
        entry's sha256, or an output that cannot be written.
    """
    output = Path(output)
    scratch = Path(tempfile.mkdtemp(prefix=".pack-", dir=output.parent))
    try:
        names = []
        for item in local:
            copy_checked(item, scratch, taken=_listed_twice)
            names.append(item.name)
        _write_tarball(scratch, output)
    except OSError as exc:
        raise _error(f"cannot write the code layer {str(output)!r}: {exc}; free space in the "
                     "env cache or point cache_dir elsewhere", "code layer") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return names


def _listed_twice(name: str, kind: str, target: Path) -> str:
    return f"local code {name!r} is listed twice: give each module one entry"


def _write_tarball(root: Path, output: Path) -> None:
    with open(output, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = LAYER_MTIME
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _error(problem: str, name: str) -> BuildError:
    return BuildError(f"code: {problem}", step="code", package=name)
