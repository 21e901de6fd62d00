"""A build that runs out of disk says so: the cause, the directory and its free space.

Before, a full cache disk read "uv could not install 'numpy': Check the name and version on the
index". The cache here is a real 150 MB tmpfs, too small for numpy's env.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tools import require

from parsl_poncho.build import BuildOptions
from parsl_poncho.errors import BuildError
from parsl_poncho.spec import Spec
from parsl_poncho.store import EnvStore


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount_point)],
                   check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_full_cache_disk_is_named_not_blamed_on_the_package(
        small_disk: Path, seeded_channel: Path, build_cache_dir: Path) -> None:
    spec = Spec(conda=("python=3.11", "pip"), pip=("numpy==2.4.6", "cloudpickle==3.1.3"))
    options = BuildOptions(channels=(str(seeded_channel),), cache_dir=build_cache_dir)
    with EnvStore(small_disk / "cache", build_options=options) as store:
        with pytest.raises(BuildError, match="ran out of disk space") as info:
            store.get(spec).result(timeout=600)
    message = str(info.value)
    assert str(small_disk) in message and "MB free" in message
    assert "check the name" not in message.lower()
    assert "No space left on device" in message  # the tool's own words are kept
    # which step fills the disk depends on what the package caches already hold
    assert info.value.step in ("solve", "pip", "pack"), info.value.step
