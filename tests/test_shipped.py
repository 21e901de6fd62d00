"""Large arguments replaced by content-addressed files (parsl_poncho.shipped)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from parsl_poncho import _joblib_remote
from parsl_poncho.errors import PonchoError
from parsl_poncho.shipped import ArgumentShipper, ShippingError

MB = 1024 * 1024


def total(a: np.ndarray, scale: float = 1.0) -> float:
    return float(a.sum()) * scale


def _unpickle_in(directory: Path, data: bytes) -> object:
    """Unpickle as a worker would: in the task sandbox holding the shipped files."""
    old = os.getcwd()
    os.chdir(directory)
    try:
        return pickle.loads(data)
    finally:
        os.chdir(old)


def test_large_array_becomes_a_file_named_by_its_content(tmp_path: Path) -> None:
    shipper = ArgumentShipper(data_dir=tmp_path)
    big = np.arange(MB // 8 + 1, dtype=np.float64)  # just above 1 MB
    small = np.arange(10)
    calls, files = shipper.ship_calls([(total, (big,), {"scale": small})])
    (func, args, kwargs), = calls
    assert func is total and kwargs["scale"] is small  # small arguments travel as they are
    assert isinstance(args[0], _joblib_remote.ShippedArg)
    (shipped,) = files
    assert shipped.name.startswith("poncho-data-") and shipped.name.endswith(".npy")
    assert Path(shipped.path).parent == tmp_path and shipped.size > MB
    again = ArgumentShipper(data_dir=tmp_path).ship_calls([(total, (big.copy(),), {})])[1]
    assert [f.name for f in again] == [shipped.name]  # equal content, same name
    changed = big.copy()
    changed[0] = -1
    assert ArgumentShipper(data_dir=tmp_path).ship_calls([(total, (changed,), {})])[1][0].name \
        != shipped.name


def test_shipped_array_unpickles_as_a_read_only_memory_map(tmp_path: Path) -> None:
    big = np.random.default_rng(0).random((600, 300))
    calls, files = ArgumentShipper(data_dir=tmp_path).ship_calls([(total, (big,), {})])
    data = cloudpickle.dumps(calls)
    assert len(data) < 10_000  # the array is not in the pickle
    (func, (loaded,), _), = _unpickle_in(tmp_path, data)
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
    np.testing.assert_array_equal(loaded, big)
    assert func(loaded) == total(big)


@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_every_memory_layout_round_trips(tmp_path: Path, order: str) -> None:
    base = np.arange(400 * 800, dtype=np.int32).reshape(400, 800)
    array = {"C": base, "F": np.asfortranarray(base), "strided": base[:, ::2]}[order]
    calls, _ = ArgumentShipper(max_nbytes=1000, mmap_mode=None, data_dir=tmp_path).ship_calls(
        [(total, (array,), {})])
    (_, (loaded,), _), = _unpickle_in(tmp_path, cloudpickle.dumps(calls))
    assert type(loaded) is np.ndarray and loaded.flags.writeable  # mmap_mode=None: in memory
    np.testing.assert_array_equal(loaded, array)


def test_dataframe_and_series_are_shipped_as_pickles(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(200_000), "b": np.linspace(0, 1, 200_000)})
    calls, files = ArgumentShipper(data_dir=tmp_path).ship_calls(
        [(len, (frame, frame["a"]), {})])
    assert sorted(f.name[-4:] for f in files) == [".pkl", ".pkl"]
    (_, (got_frame, got_series), _), = _unpickle_in(tmp_path, cloudpickle.dumps(calls))
    pd.testing.assert_frame_equal(got_frame, frame)
    pd.testing.assert_series_equal(got_series, frame["a"])


def test_the_same_argument_in_many_calls_is_one_file_hashed_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    shipper = ArgumentShipper(data_dir=tmp_path)
    big = np.ones(MB)
    hashed = []
    real = ArgumentShipper._array
    monkeypatch.setattr(ArgumentShipper, "_array",
                        lambda self, a: hashed.append(1) or real(self, a))
    calls, files = shipper.ship_calls([(total, (big,), {}) for _ in range(5)])
    calls2, files2 = shipper.ship_calls([(total, (big,), {})])
    assert len(files) == 1 and files2 == files and len(hashed) == 1
    assert calls[0][1][0] is calls[4][1][0] is calls2[0][1][0]  # one stand-in: pickled once
    shipper.forget()  # the end of a Parallel call: the array may change before the next
    shipper.ship_calls([(total, (big,), {})])
    assert len(hashed) == 2


def test_arrays_in_lists_tuples_and_dicts_are_shipped(tmp_path: Path) -> None:
    shipper = ArgumentShipper(data_dir=tmp_path)
    big = np.ones(MB)
    small = [1, 2]
    calls, files = shipper.ship_calls([(len, ([big, 3], small), {"fit_params": {"w": (big,)}})])
    (_, (in_list, same), kwargs), = calls
    assert same is small  # nothing to replace: the very object
    assert isinstance(in_list, list) and in_list[1] == 3
    assert in_list[0] is kwargs["fit_params"]["w"][0]  # one stand-in for one array
    assert isinstance(in_list[0], _joblib_remote.ShippedArg) and len(files) == 1
    too_deep = [[[big]]]
    assert shipper.ship_calls([(len, (too_deep,), {})])[0][0][1][0] is too_deep


def test_what_is_not_shipped(tmp_path: Path) -> None:
    shipper = ArgumentShipper(data_dir=tmp_path)
    objects = np.empty(MB, dtype=object)
    long_list = [np.ones(MB)] + [0] * 100
    subclass = np.ma.masked_array(np.ones(MB))
    calls, files = shipper.ship_calls([(len, (objects, long_list, subclass, b"x" * 2 * MB),
                                        {})])
    assert files == [] and calls[0][1][0] is objects and calls[0][1][1] is long_list
    off = ArgumentShipper(max_nbytes=None, data_dir=tmp_path)
    assert off.ship_calls([(len, (np.ones(MB),), {})])[1] == []


def test_bad_options_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ShippingError, match="mmap_mode 'x' is not one of"):
        ArgumentShipper(mmap_mode="x")
    with pytest.raises(PonchoError, match="use a size >= 0, or None"):
        ArgumentShipper(max_nbytes=-1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    shipper = ArgumentShipper(data_dir=blocker / "sub")
    with pytest.raises(ShippingError, match="pass data_dir= or set PARSL_PONCHO_CACHE"):
        shipper.ship_calls([(len, (np.ones(MB),), {})])


def test_default_directory_is_per_process_and_removed_at_exit(tmp_path: Path) -> None:
    code = ("import numpy as np; from parsl_poncho.shipped import ArgumentShipper;"
            "_, f = ArgumentShipper().ship_calls([(len, (np.ones(2**20),), {})]);"
            "import os; print(f[0].path); assert os.path.exists(f[0].path)")
    env = {**os.environ, "PARSL_PONCHO_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith(str(tmp_path / "shipped")) and not Path(out).exists()
    assert not Path(out).parent.exists()
