"""PonchoExecutor options that need no Work Queue: data sections and the default disk."""

from __future__ import annotations

import pytest

from parsl_poncho import EnvOptions, PonchoExecutor, SizingOptions
from parsl_poncho.errors import SpecError
from parsl_poncho.monitor import disk_for
from parsl_poncho.spec import Spec

DATA = {
    "http": {"TABLE": {"url": "http://127.0.0.1:9/table.csv", "type": "file",
                       "sha256": "a" * 64}},
    "git": {"CUTS": {"remote": "https://example.org/cuts.git", "ref": "v1"}},
}


def test_data_is_added_to_every_spec_and_changes_its_hash() -> None:
    ex = PonchoExecutor(envs=EnvOptions(data=DATA))
    spec = Spec(conda=("python=3.11.7", "pip"), pip=("cloudpickle==3.1.2",))
    merged = ex._data.add(spec)
    assert set(merged.http) == {"TABLE"} and set(merged.git) == {"CUTS"}
    assert merged.hash() != spec.hash()
    assert ex._data.add(spec) is merged  # memoised per analysed spec


def test_no_data_leaves_the_spec_alone() -> None:
    spec = Spec(conda=("python=3.11.7",))
    assert PonchoExecutor()._data.add(spec) is spec


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"gti": {}}, r"only 'git' and 'http' sections, not \['gti'\]"),
        ({"http": {"T": {"url": "ftp://x", "type": "file"}}}, r"http\.T\.url"),
        ({"git": {"C": {"remote": "--upload-pack=evil", "ref": "v1"}}}, r"git\.C\.remote"),
    ],
)
def test_bad_data_is_refused_at_configuration(data: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        PonchoExecutor(envs=EnvOptions(data=data))


def test_task_without_disk_asks_for_its_tarball_plus_default_disk() -> None:
    size, default = 100 * 2**20 + 1, PonchoExecutor().sizing.default_disk
    assert disk_for({"cores": 1}, size, default) == {"cores": 1, "disk": 101 + 1024}
    assert disk_for({"cores": 1, "disk": 5}, size, default) == {"cores": 1, "disk": 5}
    no_default = PonchoExecutor(sizing=SizingOptions(default_disk=None)).sizing.default_disk
    assert disk_for({"cores": 1}, size, no_default) == {
        "cores": 1}
