"""Every exception parsl-poncho raises; a leaf module that imports nothing from the package."""

from __future__ import annotations


class PonchoError(Exception):
    """Base class of every error parsl-poncho raises."""


class SpecError(PonchoError, ValueError):
    """An environment spec is malformed; ``problems`` lists every ``path: what is wrong``."""

    def __init__(self, msg: str, problems: list[str] | None = None, source: str | None = None):
        self.problems = list(problems or [])
        self.source = source
        super().__init__(msg)


class BuildError(PonchoError):
    """Building an environment failed: ``step``, ``package`` say where; ``log_tail`` says why.

    ``log`` is the failing tool's whole output when there is one; ``log_path`` where the
    store kept it (failed builds' logs live in the cache, see EnvStore).
    """

    def __init__(
        self,
        msg: str,
        *,
        step: str | None = None,
        package: str | None = None,
        log_tail: str = "",
        log: str = "",
        log_path: str | None = None,
    ):
        self.step = step
        self.package = package
        self.log_tail = log_tail
        self.log = log
        self.log_path = log_path
        super().__init__(msg)


class StoreError(PonchoError):
    """The environment cache cannot be used (permissions, corrupt entry, in use)."""


class AnalysisError(PonchoError):
    """A function's dependencies cannot be worked out."""


class UnresolvedImportError(AnalysisError):
    """A module a function needs belongs to no installed distribution and is not local code."""

    def __init__(self, msg: str, *, module: str, function: str | None = None):
        self.module = module
        self.function = function
        super().__init__(msg)


class ExecutorError(PonchoError):
    """The executor could not run a task (submission, Work Queue, lost worker)."""


class RemoteTaskError(ExecutorError):
    """A task failed on the worker; ``remote_traceback`` holds the worker side's traceback."""

    def __init__(self, msg: str, *, remote_traceback: str = ""):
        self.remote_traceback = remote_traceback
        super().__init__(msg)


class TaskSerializationError(ExecutorError, TypeError):
    """A task's function or an argument cannot be pickled; ``what`` names the object."""

    def __init__(self, msg: str, *, what: str = ""):
        self.what = what
        super().__init__(msg)


class EnvVerificationError(ExecutorError):
    """A built environment cannot import a module a task needs (checked before dispatch)."""

    def __init__(self, msg: str, *, env_hash: str = "", module: str = "",
                 distribution: str | None = None):
        self.env_hash = env_hash
        self.module = module
        self.distribution = distribution
        super().__init__(msg)


class ShimNotFoundError(PonchoError, FileNotFoundError):
    """A worker-side file (poncho_run, run_function.py) is missing from the installation."""


class AnalysisOptionError(AnalysisError, ValueError):
    """Analysis overrides (pkg_mapping, extra_pkgs, ignore, channels) are invalid: ``problems``."""

    def __init__(self, msg: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(msg)


class MissingModuleError(UnresolvedImportError, ModuleNotFoundError):
    """An app imports a module that does not exist on the submit host either.

    Raised by PonchoExecutor.submit() in place of UnresolvedImportError so that code catching
    ``ImportError``/``ModuleNotFoundError`` around ``future.result()`` behaves as with any other
    executor (where the same import fails on the worker).
    """


class DeliveryError(ExecutorError):
    """Environments cannot be delivered as ``env_delivery`` says (bad option, publish failed)."""
