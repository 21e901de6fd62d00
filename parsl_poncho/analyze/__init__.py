"""Dependency analysis: from a function (and its arguments) to a pinned environment Spec.

Layers, each usable alone: :mod:`.modules` (callable -> modules it needs),
:mod:`.classify` (module -> stdlib | distribution | local), :mod:`.pin` (-> pinned Spec), and
:class:`Analyzer`, which ties them together with memoisation and overrides.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from parsl_poncho.analyze.analyzer import Analyzer, Requirements
from parsl_poncho.analyze.classify import Classification, Classifier, Distribution
from parsl_poncho.analyze.modules import ModuleUse, find_modules, strip_parsl_wrapper
from parsl_poncho.spec import Spec

__all__ = [
    "Analyzer",
    "Classification",
    "Classifier",
    "Distribution",
    "ModuleUse",
    "Requirements",
    "analyze",
    "default_analyzer",
    "find_modules",
    "strip_parsl_wrapper",
]

_default: Analyzer | None = None
_default_lock = threading.Lock()


def default_analyzer() -> Analyzer:
    """The process-wide Analyzer with default options (created on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Analyzer()
    return _default


def analyze(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Spec:
    """The pinned Spec of what ``func(*args, **kwargs)`` needs, with default options.

    >>> import json
    >>> analyze(lambda: json.dumps([])).pip[0].startswith("cloudpickle==")
    True
    """
    analyzer = _default if _default is not None else default_analyzer()
    return analyzer.analyze(func, *args, **kwargs)
