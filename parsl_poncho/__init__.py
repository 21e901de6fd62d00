"""parsl-poncho: run each Parsl app inside a conda environment built for it and shipped by Work Queue."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
