"""Build a fake installed distribution in a directory (for sys.path): package files + dist-info."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterable, Mapping


def make_fake_dist(root: Path, name: str, files: Mapping[str, str], *,
                   requires: Iterable[str] = (), version: str = "1.0") -> Path:
    """Write ``files`` (relative path -> source) under ``root`` and a ``name``-``version``
    .dist-info whose METADATA declares ``requires`` and whose top_level.txt and RECORD list the
    top-level names of ``files``. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {req}" for req in requires]
    (dist_info / "METADATA").write_text("\n".join(meta) + "\n")
    tops = sorted({rel.split("/")[0].removesuffix(".py") for rel in files})
    (dist_info / "top_level.txt").write_text("\n".join(tops) + "\n")
    record = [f"{rel},," for rel in files] + [f"{dist_info.name}/{f},," for f in (
        "METADATA", "top_level.txt", "RECORD")]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return root
