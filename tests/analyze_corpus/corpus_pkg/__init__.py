"""A local package; its submodule uses a relative import and pandas."""

from .sub import summarize

__all__ = ["summarize"]
