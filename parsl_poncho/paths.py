"""Where parsl-poncho keeps things on the submit host."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$PARSL_PONCHO_CACHE``, else ``$XDG_CACHE_HOME/parsl-poncho``, else ``~/.cache/...``."""
    explicit = os.environ.get("PARSL_PONCHO_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "parsl-poncho"


def default_channel_dir() -> Path:
    """The local conda channel that ``parsl-poncho channel seed`` fills by default."""
    return default_cache_dir() / "channel"
