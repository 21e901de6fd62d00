"""Large arguments sent once per node: content-addressed files stand in for them in calls.

A numpy array or a pandas DataFrame/Series above a size threshold, passed as an argument (or
in a list, tuple or dict argument: :data:`MAX_DEPTH` levels, :data:`MAX_ITEMS` items at most),
is written once to ``poncho-data-<sha256>.npy`` (or ``.pkl``) and replaced in the
call by a :class:`~parsl_poncho._joblib_remote.ShippedArg`, which unpickles on the worker as
``numpy.load(name, mmap_mode)`` (``pandas.read_pickle(name)``). The caller sends the file as a
*cached* Work Queue input, so a worker receives it once, whatever the number of tasks using it;
the name is the content's hash, so equal arrays share a file and a changed array gets a new one.
This is what joblib's loky backend does with ``max_nbytes`` and ``mmap_mode`` on one host.

Only exact ``numpy.ndarray``/``numpy.memmap`` arrays without Python objects, and pandas
DataFrames and Series, are shipped; anything else (scipy sparse matrices, arrays held in
objects' attributes or deeper in containers) is pickled with the call as usual.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from parsl_poncho._joblib_remote import ShippedArg
from parsl_poncho.errors import PonchoError
from parsl_poncho.paths import default_cache_dir

__all__ = ["DEFAULT_MAX_NBYTES", "ArgumentShipper", "ShippedFile", "ShippingError"]

#: Arguments at least this large are shipped as files: joblib's ``max_nbytes`` default, "1M".
DEFAULT_MAX_NBYTES = 1024 * 1024
PREFIX = "poncho-data-"
#: Lists, tuples and dicts among the arguments are looked into this deep, when this small.
MAX_DEPTH, MAX_ITEMS = 2, 64
_CONTAINERS = (list, tuple, dict)
_MMAP_MODES = (None, "r", "c")


class ShippingError(PonchoError, ValueError):
    """A large argument cannot be shipped as a file (bad option, or the data directory)."""


@dataclass(frozen=True)
class ShippedFile:
    """A file standing in for an argument: ``path`` here, ``name`` in the task's sandbox."""

    path: str
    name: str
    size: int


class ArgumentShipper:
    """Replaces the large arguments of calls by references to content-addressed files.

    :param max_nbytes: size threshold in bytes (None: ship nothing), as joblib's ``max_nbytes``.
    :param mmap_mode: how workers open shipped arrays: ``"r"`` (read-only memory map, the
        default, as joblib's), ``"c"`` (copy-on-write) or None (read into memory). joblib's
        ``"r+"`` and ``"w+"`` become ``"c"``: a worker's writes cannot reach the caller.
    :param data_dir: where the files are written; default a directory of this process under
        ``<cache>/shipped/``, removed at exit.
    :raises ShippingError: an unknown ``mmap_mode`` or a negative ``max_nbytes``.
    """

    def __init__(self, max_nbytes: int | None = DEFAULT_MAX_NBYTES, mmap_mode: str | None = "r",
                 data_dir: str | os.PathLike | None = None) -> None:
        if mmap_mode in ("r+", "w+"):
            mmap_mode = "c"
        if mmap_mode not in _MMAP_MODES:
            raise ShippingError(f"mmap_mode {mmap_mode!r} is not one of None, 'r', 'r+', 'w+', "
                                "'c'")
        if max_nbytes is not None and max_nbytes < 0:
            raise ShippingError(f"max_nbytes is {max_nbytes!r}; use a size >= 0, or None to "
                                "ship nothing")
        self.max_nbytes = max_nbytes
        self.mmap_mode = mmap_mode
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._lock = threading.Lock()
        self._known: dict[int, tuple[weakref.ref, ShippedArg, ShippedFile]] = {}

    def ship_calls(self, calls: Iterable[tuple[Callable, tuple, dict]]
                   ) -> tuple[list[tuple[Callable, tuple, dict]], list[ShippedFile]]:
        """The calls with their large top-level arguments replaced, and the files to send."""
        files: dict[str, ShippedFile] = {}
        out = []
        for func, args, kwargs in calls:
            new_args = tuple(self._replace(a, files) for a in args)
            new_kwargs = {k: self._replace(v, files) for k, v in kwargs.items()}
            out.append((func, new_args, new_kwargs))
        return out, list(files.values())

    def forget(self) -> None:
        """Drop the memo of arguments already hashed (at the end of a ``Parallel`` call, so an
        array changed in place before the next call is hashed again)."""
        with self._lock:
            self._known.clear()

    # -- one argument ---------------------------------------------------------------------------
    def _replace(self, value: Any, files: dict[str, ShippedFile], depth: int = 0) -> Any:
        if self.max_nbytes is None:
            return value
        writer = _writer_for(value, self.max_nbytes)
        if writer is None:
            if depth < MAX_DEPTH and type(value) in _CONTAINERS and len(value) <= MAX_ITEMS:
                return self._replace_inside(value, files, depth + 1)
            return value
        with self._lock:
            known = self._known.get(id(value))
            if known is not None and known[0]() is value:
                files[known[2].name] = known[2]
                return known[1]
        ref, shipped = writer(self, value)
        with self._lock:
            key = id(value)
            self._known[key] = (weakref.ref(value, lambda _, key=key: self._known.pop(key, None)),
                                ref, shipped)
        files[shipped.name] = shipped
        return ref

    def _replace_inside(self, value: Any, files: dict[str, ShippedFile], depth: int) -> Any:
        """A list, tuple or dict with its large items replaced (the same object if none is)."""
        if type(value) is dict:
            new = {k: self._replace(v, files, depth) for k, v in value.items()}
            changed = any(new[k] is not v for k, v in value.items())
        else:
            items = [self._replace(v, files, depth) for v in value]
            changed = any(a is not b for a, b in zip(items, value))
            new = type(value)(items)
        return new if changed else value

    def _array(self, array: Any) -> tuple[ShippedArg, ShippedFile]:
        np = sys.modules["numpy"]  # loaded: ``array`` is one of its arrays

        if array.flags.c_contiguous:
            flat, order = array, "C"
        elif array.flags.f_contiguous:
            flat, order = array.T, "F"
        else:
            flat, order = np.ascontiguousarray(array), "C"
        digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|{order}|".encode())
        digest.update(memoryview(flat).cast("B"))
        name = f"{PREFIX}{digest.hexdigest()}.npy"
        path = self._publish(name, lambda f: np.save(f, array, allow_pickle=False))
        options = (self.mmap_mode,) if self.mmap_mode else ()
        return (ShippedArg(np.load, name, options, type(array)),
                ShippedFile(str(path), name, path.stat().st_size))

    def _pandas(self, frame: Any) -> tuple[ShippedArg, ShippedFile]:
        pd = sys.modules["pandas"]  # loaded: ``frame`` is one of its objects

        data = pickle.dumps(frame, protocol=5)
        name = f"{PREFIX}{hashlib.sha256(data).hexdigest()}.pkl"
        path = self._publish(name, lambda f: f.write(data))
        return (ShippedArg(pd.read_pickle, name, (), type(frame)),
                ShippedFile(str(path), name, len(data)))

    def _publish(self, name: str, write: Callable[[Any], Any]) -> Path:
        """The file ``name`` in the data directory, written atomically unless present."""
        directory = self._directory()
        path = directory / name
        if path.exists():
            return path
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _directory(self) -> Path:
        with self._lock:
            if self._data_dir is None:
                self._data_dir = _process_data_dir()
            directory = self._data_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ShippingError(f"cannot create the directory {str(directory)!r} for large "
                                f"arguments ({exc}); pass data_dir= or set PARSL_PONCHO_CACHE "
                                "to a writable place") from exc
        return directory


def _writer_for(value: Any, max_nbytes: int
                ) -> Callable[[ArgumentShipper, Any], tuple[ShippedArg, ShippedFile]] | None:
    """How to ship ``value`` (None: pickle it with the call). Never imports numpy or pandas
    (neither is a dependency of parsl-poncho): a value of theirs means they are loaded."""
    np = sys.modules.get("numpy")
    if np is not None and type(value) in (np.ndarray, np.memmap):
        if value.dtype.hasobject or value.nbytes < max_nbytes:
            return None
        return ArgumentShipper._array
    pd = sys.modules.get("pandas")
    if pd is not None and type(value) in (pd.DataFrame, pd.Series):
        usage = value.memory_usage(index=True, deep=False)  # a Series of a DataFrame's columns
        if int(getattr(usage, "sum", lambda: usage)()) < max_nbytes:
            return None
        return ArgumentShipper._pandas
    return None


_process_dir: Path | None = None
_process_dir_lock = threading.Lock()


def _process_data_dir() -> Path:
    """``<cache>/shipped/<pid>-<random>``, made on first use and removed at exit."""
    global _process_dir
    with _process_dir_lock:
        if _process_dir is None:
            parent = default_cache_dir() / "shipped"
            parent.mkdir(parents=True, exist_ok=True)
            _process_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
            atexit.register(shutil.rmtree, _process_dir, True)
        return _process_dir
