"""The build manifest: spec, resolved lock, tarball size and sha256, phase times, tools."""

from __future__ import annotations

import json
import os
import platform as _platform
import sys
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

#: Version of the manifest's layout.
MANIFEST_FORMAT = 1


@dataclass
class Manifest:
    """What a build produced and how; ``to_dict()`` is the JSON written beside the tarball."""

    spec: dict[str, Any]
    hash: str | None
    platform: str
    tarball: str
    size: int
    sha256: str
    lock: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (phase seconds rounded to ms)."""
        out = asdict(self)
        out["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of ``to_dict`` (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as JSON to ``path`` atomically; return the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """``spec.to_dict()``, or a plain field dump while that is not implemented."""
    try:
        return dict(spec.to_dict())
    except NotImplementedError:
        pass
    if is_dataclass(spec):
        raw = asdict(spec)
        return json.loads(json.dumps(raw, default=list))
    return dict(spec)


def tool_versions(**extra: str) -> dict[str, str]:
    """Versions of the tools a build used (python, py-rattler, conda-pack, ...)."""
    versions = {"python": _platform.python_version(), "parsl-poncho": _version("parsl-poncho")}
    for dist in ("py-rattler", "conda-pack"):
        versions[dist] = _version(dist)
    versions.update({k: v for k, v in extra.items() if v})
    return versions


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def python_tag() -> str:
    """``cpython-3.11.7`` of the interpreter running the build."""
    return f"{sys.implementation.name}-{_platform.python_version()}"
