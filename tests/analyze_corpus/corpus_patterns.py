"""Corpus for the analysis tests: functions, one or more per pattern, each with what it needs.

The tests register this module with ``cloudpickle.register_pickle_by_value`` so its functions
travel by value, as functions of a ``__main__`` script do. ``CASES`` lists (name, callable, args,
kwargs, expected direct distributions, expected local modules).
"""

# ruff: noqa: E731
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import corpus_helpers
import numpy as np
import pandas as pd
import scipy
import scipy.linalg
import scipy.optimize as opt
from corpus_helpers import scale as sc
from corpus_pkg import summarize
from scipy import stats
from scipy.special import expit as sigmoid
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error


@dataclass
class Case:
    name: str
    func: Callable[..., Any]
    dists: frozenset[str]
    local: frozenset[str] = frozenset()
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


CASES: list[Case] = []


def case(dists=(), local=(), args=(), kwargs=None, name=None):
    """Register the decorated function as a corpus case (the function is returned unchanged)."""

    def register(fn):
        add(name or fn.__name__, fn, dists, local, args, kwargs)
        return fn

    return register


def add(name, fn, dists=(), local=(), args=(), kwargs=None):
    CASES.append(Case(name, fn, frozenset(dists), frozenset(local), tuple(args), kwargs or {}))


# 1. import statements anywhere --------------------------------------------------------------
@case(dists={"numpy"})
def import_in_body():
    import numpy

    return numpy.zeros(1)


@case(dists={"scipy"})
def from_import_in_body():
    from scipy import stats as st

    return st.norm.pdf(0)


@case(dists={"pandas"})
def import_in_nested_function():
    def inner():
        import pandas

        return pandas.Series([1])

    return inner()


@case(dists={"scikit-learn"})
def import_in_class_body():
    class Local:
        from sklearn import linear_model as lm

    return Local.lm


@case(dists={"numpy"})
def global_in_comprehension():
    return [np.float64(i) for i in range(3)]


@case(dists={"pandas"})
def global_in_generator_expression():
    return list(pd.Series([i]) for i in range(2))


lambda_global = lambda x: np.sqrt(x)
add("lambda_global", lambda_global, {"numpy"})

add("lambda_inline", lambda: stats.norm.cdf(0), {"scipy"})


@case(dists=set())
def stdlib_only():
    import json

    return json.dumps({"cwd": os.getcwd()})


@case(dists={"numpy"})
def optional_import_guarded():
    try:
        import not_a_real_module_for_poncho  # noqa: F401
    except ImportError:
        pass
    return np.ones(1)


# 2. module globals under aliases, attribute chains --------------------------------------------
@case(dists={"numpy"})
def global_alias():
    return np.ones(2)


@case(dists={"scipy"})
def global_from_import_module():
    return stats.norm.pdf(1.0)


@case(dists={"scipy", "numpy"})  # a numpy ufunc from scipy: unpickling needs both
def global_function_alias():
    return sigmoid(0.0)


@case(dists={"scipy"})
def attribute_chain_submodule():
    return scipy.linalg.norm([3.0, 4.0])


@case(dists={"scipy"})
def global_submodule_alias():
    return opt.minimize_scalar(lambda x: (x - 1) ** 2).x


# 3. globals bound to objects from other modules ----------------------------------------------
RNG = np.random.default_rng(0)
EMPTY = pd.DataFrame({"a": [1, 2]})
METRICS = {"mse": mean_squared_error}


@case(dists={"numpy"})
def global_object_instance():
    return RNG.random()


@case(dists={"pandas"})
def global_dataframe():
    return len(EMPTY)


@case(dists={"scikit-learn"})
def global_class_from_distribution():
    return LinearRegression()


@case(dists={"scikit-learn"})
def global_dict_of_functions():
    return METRICS["mse"]([1.0], [1.0])


# 4. closures and defaults ----------------------------------------------------------------------
def _make_closure_over_frame():
    frame = pd.DataFrame({"x": [1]})

    def closure():
        return frame.shape

    return closure


add("closure_over_dataframe", _make_closure_over_frame(), {"pandas"})


def _make_closure_over_function():
    fn = stats.zscore

    def closure(values):
        return fn(values)

    return closure


add("closure_over_function", _make_closure_over_function(), {"scipy"})


@case(dists={"numpy"})
def default_argument(values=(1, 2), reducer=np.mean):
    return reducer(values)


@case(dists={"pandas"})
def keyword_only_default(*, frame=EMPTY):
    return frame.columns


# 5. helpers of the same module, transitively, cycles -----------------------------------------
def _helper_scipy(x):
    from scipy import special

    return special.gamma(x)


def _helper_middle(x):
    return _helper_leaf(x)


def _helper_leaf(x):
    return pd.Series([x])


@case(dists={"scipy"})
def calls_helper():
    return _helper_scipy(3.0)


@case(dists={"pandas"})
def calls_helper_transitively():
    return _helper_middle(1)


def ping(n):
    return 0 if n <= 0 else pong(n - 1)


def pong(n):
    return np.int64(n) if n <= 0 else ping(n - 1)


add("mutual_recursion_cycle", ping, {"numpy"}, args=(3,))


class Model(LinearRegression):
    """A class of this module: by value; a base from scikit-learn, a method using scipy."""

    def score_all(self, x):
        return stats.describe(x)

    @staticmethod
    def helper():
        return pd.Index([1])

    @property
    def name(self):
        return np.str_("model")


@case(dists={"scikit-learn", "scipy", "pandas", "numpy"})
def uses_local_class():
    return Model()


add("class_itself", Model, {"scikit-learn", "scipy", "pandas", "numpy"})


# 6. decorators, partials, bound methods, callable objects -------------------------------------
def traced(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@case(dists={"scipy"})
@traced
def decorated_function():
    return stats.norm.pdf(0)


def _with_wrapped_only():
    def inner():
        return pd.DataFrame()

    def outer():
        return None

    outer.__wrapped__ = inner
    return outer


add("wrapped_attribute", _with_wrapped_only(), {"pandas"})


def _partial_target(frame, column):
    return frame[column]


add("partial_function", functools.partial(_helper_scipy, 2.0), {"scipy"})
add("partial_bound_argument", functools.partial(_partial_target, EMPTY), {"pandas"})


class Scaler:
    """Local class: methods use numpy; an instance holds a DataFrame."""

    def __init__(self):
        self.frame = pd.DataFrame({"a": [1.0]})

    def apply(self, x):
        return np.multiply(x, 2)

    def __call__(self, x):
        return stats.zscore(x)


add("bound_method", Scaler().apply, {"numpy", "pandas", "scipy"})
add("callable_object", Scaler(), {"numpy", "pandas", "scipy"})


# 7. argument types -------------------------------------------------------------------------
@case(dists={"pandas"}, args=(pd.DataFrame({"a": [1]}),))
def argument_dataframe(frame):
    return frame.sum()


@case(dists={"numpy"}, args=([np.arange(3), np.ones(2)],))
def argument_list_of_arrays(arrays):
    return sum(len(a) for a in arrays)


@case(dists={"scikit-learn"}, kwargs={"model": LinearRegression()})
def argument_keyword_model(model=None):
    return model


add("argument_function", lambda fn: fn(1.0), {"scipy", "numpy"}, args=(sigmoid,))


# 8. local code --------------------------------------------------------------------------------
@case(dists={"numpy"}, local={"corpus_helpers"})
def local_module_attribute():
    return corpus_helpers.scale([1, 2])


@case(dists={"numpy"}, local={"corpus_helpers"})
def local_function_alias():
    return sc([1])


@case(dists={"numpy"}, local={"corpus_helpers"})
def local_class_instance_global():
    return corpus_helpers.Accumulator().add([1])


@case(dists={"pandas"}, local={"corpus_pkg"})
def local_package_function():
    return summarize([1, 2, 3])


@case(dists={"pandas"}, local={"corpus_pkg"})
def local_package_import_in_body():
    from corpus_pkg import sub

    return sub.summarize([1])


@case(dists={"numpy"}, local={"corpus_helpers"}, args=(corpus_helpers.Accumulator(),))
def argument_local_instance(acc):
    return acc.total


# 9. everything at once (the benchmark's function) ----------------------------------------------
@case(dists={"numpy", "scipy", "pandas"})
def mixed_numpy_scipy_pandas(n=3, reducer=np.mean):
    frame = pd.DataFrame({"x": RNG.normal(size=n)})
    z = stats.zscore(frame["x"])
    return reducer(z), _helper_middle(scipy.linalg.norm(z))
