"""Environment specs: the PONCHO JSON formats in and out, validation, canonical form and hash.

SKELETON: the data model below is the contract other modules code against. The spec issue's
helper completes validation (JSON Schema), environment.yml / requirements.txt input and the
canonical hash, keeping these names and signatures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

#: Bumped whenever the builder changes what a given spec produces; part of every hash.
BUILD_FORMAT_VERSION = 1

#: Top-level key holding parsl-poncho's extensions; cctools' poncho ignores unknown keys.
EXTENSION_KEY = "x-parsl-poncho"

HttpType = Literal["file", "tar"]


@dataclass(frozen=True)
class GitData:
    """A git repository cloned at ``ref`` and exposed as an environment variable."""

    remote: str
    ref: str = "HEAD"


@dataclass(frozen=True)
class HttpData:
    """A file fetched over http(s), optionally unpacked, exposed as an environment variable."""

    url: str
    type: HttpType = "file"
    compression: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class LocalCode:
    """A module file or package directory of the user's, shipped into site-packages.

    ``name`` is the top-level import name; ``sha256`` is the content hash that keys the spec
    (never the path, which only says where to copy from on this host).
    """

    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class PipOptions:
    """Where the pip part installs from."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spec:
    """A pinned environment: conda match specs, pip requirements, data and local code."""

    channels: tuple[str, ...] = ("conda-forge",)
    conda: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    pip_options: PipOptions = field(default_factory=PipOptions)
    git: Mapping[str, GitData] = field(default_factory=dict)
    http: Mapping[str, HttpData] = field(default_factory=dict)
    local: tuple[LocalCode, ...] = ()

    # -- input -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Spec:
        """Parse a PONCHO spec (current or old format, with our extensions). Raises SpecError."""
        raise NotImplementedError

    @classmethod
    def from_file(cls, path: str | Path) -> Spec:
        """Read a PONCHO JSON spec, a conda environment.yml or a pip requirements.txt."""
        raise NotImplementedError

    # -- output ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The current PONCHO format; extensions only under EXTENSION_KEY, only when used."""
        raise NotImplementedError

    def canonical_json(self) -> str:
        """Sorted, normalised JSON: equal for specs that differ only in order or spelling."""
        raise NotImplementedError

    def hash(self, platform: str | None = None) -> str:
        """sha256 hex of the canonical spec, the platform (default: this host's) and format."""
        payload = json.dumps(
            {"spec": self.canonical_json(), "platform": platform, "format": BUILD_FORMAT_VERSION}
        )
        return hashlib.sha256(payload.encode()).hexdigest()
