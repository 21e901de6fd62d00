"""What a joblib batch needs on a worker: the batch runner, and the stand-in of a shipped argument.

This module travels *by value* (``parsl_poncho.joblib.register`` registers it with
``cloudpickle.register_pickle_by_value``), so workers need joblib, not parsl_poncho. It must
import nothing from parsl_poncho, and nothing at module level beyond the standard library.
"""

from __future__ import annotations

from typing import Any, Callable


def run_batch(calls: list[tuple[Callable[..., Any], tuple, dict]], needs: tuple = ()
              ) -> list[Any]:
    """Run a joblib batch's calls one after another; a ``Parallel`` inside them runs
    sequentially here (a worker's cores are already the cluster's).

    ``needs`` is not used here: it holds classes the calls carry where the dependency analysis
    does not look (see ``parsl_poncho.joblib.hidden_classes``), so that the environment has
    their modules.
    """
    from joblib import parallel_config

    with parallel_config(backend="sequential"):
        return [func(*args, **kwargs) for func, args, kwargs in calls]


class ShippedArg:
    """Stands in, in a pickled call, for a large argument sent as a cached input file.

    It pickles as ``load(name, *options)`` (for example ``numpy.load("poncho-data-<sha>.npy",
    "r")``), which the worker runs in the task's sandbox, where Work Queue put the file: the
    class itself never travels. ``kind`` is the argument's type, so the dependency analysis
    still sees numpy or pandas.
    """

    __slots__ = ("kind", "load", "name", "options")

    def __init__(self, load: Callable[..., Any], name: str, options: tuple = (),
                 kind: type | None = None) -> None:
        self.load = load
        self.name = name
        self.options = options
        self.kind = kind

    def __reduce__(self) -> tuple[Callable[..., Any], tuple]:
        return self.load, (self.name, *self.options)

    def __repr__(self) -> str:
        return f"ShippedArg({self.name!r})"
