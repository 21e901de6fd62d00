"""The PonchoExecutor's option groups, and the flat arguments they replace.

``PonchoExecutor(envs=EnvOptions(...), workers=WorkerOptions(...), sizing=SizingOptions(...))``
groups what each env holds and how it is built, how workers run tasks, and how tasks are sized.
The arguments Parsl's ``WorkQueueExecutor`` also has (address, port, project_name, max_retries,
...) stay flat, so a config moves from one executor to the other unchanged.

The old flat names (``channels=``, ``worker_options=``, ``default_cores=``, ...) still work for
one release, with a FutureWarning (shown to end users, unlike DeprecationWarning) that names
the new spelling: :func:`fold_flat_arguments`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import warnings
from typing import Any, Mapping, Sequence

from parsl_poncho.errors import ExecutorError


def _check_positive(group: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ExecutorError(f"{group}({name}={value!r}): give a number above 0")


@dataclasses.dataclass(frozen=True)
class EnvOptions:
    """What goes into each app's env, and how it is built.

    :param channels: conda channels replacing the specs' own (None: keep the specs').
    :param cache_dir: environment cache (None: ``$PARSL_PONCHO_CACHE`` or
      ~/.cache/parsl-poncho).
    :param pkg_mapping: import name -> distribution overrides for the analysis.
    :param extra_pkgs: distributions added to every env.
    :param ignore: modules never shipped.
    :param pin_transitive: pin dependencies of included distributions to the host's versions.
    :param seed_channel: make a local conda channel from this host's CPython (once; cheap
      after) and build python and pip from it: envs get exactly the submit side's interpreter
      and build with no conda channel reachable. Specs needing other conda packages use their
      channels (or ``channels``) after it.
    :param data: ``{"git": {VAR: {...}}, "http": {VAR: {...}}}`` in the PONCHO spec format,
      added to every env: each VAR points at that data inside the env on the workers.
    :param verify: import the analysed modules in each new env on this host before dispatch.
    :param learn_missing: a task that failed after missing a module this host has is sent
      again to an env with it added, and the app keeps it (also in later runs).
    """

    channels: Sequence[str] | None = None
    cache_dir: str | os.PathLike | None = None
    pkg_mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_pkgs: Sequence[str] = ()
    ignore: Sequence[str] = ()
    pin_transitive: bool = True
    seed_channel: bool = True
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    verify: bool = True
    learn_missing: bool = True

    def __post_init__(self) -> None:
        for name in ("extra_pkgs", "ignore"):
            if isinstance(getattr(self, name), str):
                raise ExecutorError(f"EnvOptions({name}={getattr(self, name)!r}): give a list "
                                    "of names, not one string")
        # copies, so a caller changing its list later does not change the executor
        fixed = {"channels": None if self.channels is None else tuple(self.channels),
                 "pkg_mapping": dict(self.pkg_mapping or {}), "extra_pkgs": tuple(self.extra_pkgs),
                 "ignore": tuple(self.ignore), "data": dict(self.data or {})}
        for name, value in fixed.items():
            object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How workers are started and how they run tasks.

    :param options: extra ``work_queue_worker`` options.
    :param executable: the worker command (wrap it to run workers in containers).
    :param init_command: shell command run before each task.
    :param unpack_timeout: seconds a task waits for another task's unpack on a worker.
    :param cache_dir: where workers unpack envs, shared by the tasks of a node (None:
      ``$PARSL_PONCHO_WORKER_CACHE`` on the worker, else ``/tmp/parsl-poncho-<uid>``).
    :param server_idle_timeout: seconds an idle function server (serverless mode) stays up.
    """

    options: str = ""
    executable: str = "work_queue_worker"
    init_command: str = ""
    unpack_timeout: int = 600
    cache_dir: str | None = None
    server_idle_timeout: int = 300

    def __post_init__(self) -> None:
        _check_positive("WorkerOptions", unpack_timeout=self.unpack_timeout,
                        server_idle_timeout=self.server_idle_timeout)


@dataclasses.dataclass(frozen=True)
class SizingOptions:
    """How much of a worker each task asks for.

    :param default_cores: cores given to a task without a resource specification.
    :param default_disk: MB of sandbox a task without ``disk`` in its resource specification
      asks for, on top of its env tarball (None: let Work Queue give it the worker's whole
      free disk, which a worker forsakes as soon as its free disk shrinks).
    :param right_size: size memory of apps that set none from measured peaks
      (parsl_poncho.sizing).
    :param autolabel: let Work Queue measure and label task resources.
    :param autolabel_window: tasks measured before labelling.
    :param scaling_cores_per_worker: cores per worker assumed when Parsl scales blocks.
    """

    default_cores: int = 1
    default_disk: int | None = 1024
    right_size: bool = True
    autolabel: bool = False
    autolabel_window: int = 1
    scaling_cores_per_worker: int = 1

    def __post_init__(self) -> None:
        _check_positive("SizingOptions", default_cores=self.default_cores,
                        default_disk=self.default_disk, autolabel_window=self.autolabel_window,
                        scaling_cores_per_worker=self.scaling_cores_per_worker)


# old flat argument -> (executor argument, option class, field); one release of grace
_FLAT: dict[str, tuple[str, type, str]] = {
    **{name: ("envs", EnvOptions, name) for name in (
        "channels", "cache_dir", "pkg_mapping", "extra_pkgs", "ignore", "pin_transitive",
        "seed_channel", "data", "verify", "learn_missing")},
    "worker_options": ("workers", WorkerOptions, "options"),
    "worker_executable": ("workers", WorkerOptions, "executable"),
    "init_command": ("workers", WorkerOptions, "init_command"),
    "unpack_timeout": ("workers", WorkerOptions, "unpack_timeout"),
    "worker_cache_dir": ("workers", WorkerOptions, "cache_dir"),
    "server_idle_timeout": ("workers", WorkerOptions, "server_idle_timeout"),
    **{name: ("sizing", SizingOptions, name) for name in (
        "default_cores", "default_disk", "right_size", "autolabel", "autolabel_window",
        "scaling_cores_per_worker")},
}
_PIP = ("pip_index_url", "pip_extra_index_urls", "pip_find_links")


def fold_flat_arguments(flat: Mapping[str, Any], groups: Mapping[str, Any],
                        owner: type) -> dict[str, Any]:
    """The option groups with the deprecated flat arguments ``flat`` folded in.

    ``groups`` maps "envs", "workers" and "sizing" to what the caller gave (None: defaults);
    ``owner``'s own argument names give the did-you-mean of a misspelling.
    Each flat name warns once per call; giving a field both ways is an error.
    """
    unknown = [name for name in flat if name not in _FLAT and name not in _PIP]
    if unknown:
        known = list(inspect.signature(owner.__init__).parameters)
        close = difflib.get_close_matches(unknown[0], [*known, *_FLAT, *_PIP], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{owner.__name__}() got an unexpected keyword argument "
                        f"{unknown[0]!r}{hint}")
    changes: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name in _PIP:
            continue  # folded into pip_sources by the executor
        group, cls, field = _FLAT[name]
        given = groups.get(group)
        if given is not None and getattr(given, field) not in (value, getattr(cls(), field)):
            raise ExecutorError(
                f"PonchoExecutor got both {name}={value!r} and {group}={given!r}: "
                f"give it once, as {group}={cls.__name__}({field}=...)")
        warnings.warn(
            f"PonchoExecutor({name}=...) is deprecated and goes in the next release: "
            f"use PonchoExecutor({group}={cls.__name__}({field}=...))", FutureWarning,
            stacklevel=3)
        changes.setdefault(group, {})[field] = value
    defaults = {"envs": EnvOptions, "workers": WorkerOptions, "sizing": SizingOptions}
    folded = {}
    for group, cls in defaults.items():
        given = groups.get(group)
        if given is not None and not isinstance(given, cls):
            raise ExecutorError(f"PonchoExecutor({group}={given!r}): give a {cls.__name__}(...)")
        folded[group] = dataclasses.replace(given or cls(), **changes.get(group, {}))
    return folded


def deprecated_pip_arguments(flat: Mapping[str, Any]) -> tuple[Any, Sequence[str], Sequence[str]]:
    """The old ``pip_index_url``, ``pip_extra_index_urls`` and ``pip_find_links`` (warned)."""
    for name in _PIP:
        if name in flat:
            field = name.removeprefix("pip_")
            warnings.warn(
                f"PonchoExecutor({name}=...) is deprecated and goes in the next release: "
                f"use PonchoExecutor(pip_sources=PipSources({field}=...))", FutureWarning,
                stacklevel=3)
    return (flat.get("pip_index_url"), tuple(flat.get("pip_extra_index_urls", ())),
            tuple(flat.get("pip_find_links", ())))
