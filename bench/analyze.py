"""Benchmark dependency analysis: first-time and memoised analysis of a numpy/scipy/pandas app.

Run: ``.venv/bin/python bench/analyze.py [--repeat N]``. Prints a table of medians; the baseline
is ``cloudpickle.dumps`` of the same function (what every task submission pays anyway).
Targets (issue 3): first time < 10 ms, memoised < 20 us.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import cloudpickle

# The app: module globals under aliases, a from-import, a same-module helper (transitively),
# a closure, a default argument, a functools.partial and a DataFrame argument.
SOURCE = '''
import functools
import numpy as np
import pandas as pd
import scipy.linalg
from scipy import stats

RNG = np.random.default_rng(0)

def _leaf(x):
    from scipy import special
    return special.expit(x)

def _helper(frame):
    return _leaf(scipy.linalg.norm(frame["x"].to_numpy()))

def make_app():
    scale = np.float64(2.0)

    def app(frame, n=3, reducer=np.mean):
        z = stats.zscore(frame["x"]) * scale
        extra = pd.Series(RNG.normal(size=n))
        return reducer(z) + _helper(frame) + extra.sum()

    return app

app = make_app()
partial_app = functools.partial(app, n=4)
'''


def fresh_app(n: int):
    """A new app function with new code objects (nothing memoised for it anywhere)."""
    namespace = {"__name__": "__main__"}
    exec(compile(SOURCE, f"<bench app {n}>", "exec"), namespace)
    return namespace["app"], namespace["partial_app"]


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="first-time samples")
    parser.add_argument("--calls", type=int, default=20000, help="memoised calls")
    args = parser.parse_args(argv)

    import pandas as pd

    from parsl_poncho.analyze import Analyzer

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    analyzer = Analyzer()
    app, partial_app = fresh_app(-1)
    cold = timed(analyzer.analyze, app)  # builds the distribution indexes once per process

    first, first_args, pickling = [], [], []
    for n in range(args.repeat):
        app, partial_app = fresh_app(n)
        first.append(timed(analyzer.analyze, app))
        app, partial_app = fresh_app(n)
        first_args.append(timed(analyzer.analyze, partial_app, frame))
        pickling.append(timed(cloudpickle.dumps, app))

    def per_call(fn, *call_args) -> list[float]:
        out = []
        batch = 100
        for _ in range(max(1, args.calls // batch)):
            start = time.perf_counter()
            for _ in range(batch):
                fn(*call_args)
            out.append((time.perf_counter() - start) / batch)
        return out

    make_app = app.__globals__["make_app"]
    same_code = [timed(analyzer.analyze, make_app()) for _ in range(args.repeat)]
    memo = per_call(analyzer.analyze, app)
    memo_args = per_call(analyzer.analyze, partial_app, frame)
    spec = analyzer.analyze(partial_app, frame)

    base = median_us(pickling)
    rows = [
        ("cold process (indexes built), 1 sample", cold * 1e6),
        ("first-time analyze(app)", median_us(first)),
        ("first-time analyze(partial(app), DataFrame)", median_us(first_args)),
        ("new closure, same code: analyze(make_app())", median_us(same_code)),
        ("memoised analyze(app)", median_us(memo)),
        ("memoised analyze(partial(app), DataFrame)", median_us(memo_args)),
        ("baseline: cloudpickle.dumps(app)", base),
    ]
    print(f"python {sys.version.split()[0]}; {args.repeat} first-time samples, "
          f"{args.calls} memoised calls; spec pins {len(spec.pip)} pip packages: "
          f"{', '.join(p.split('==')[0] for p in spec.pip)}")
    print(f"{'case':<48} {'median':>12} {'vs dumps':>9}")
    for name, value in rows:
        shown = f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.2f} us"
        print(f"{name:<48} {shown:>12} {value / base:>8.2f}x")
    ok_first = median_us(first) < 10_000
    ok_memo = median_us(memo) < 20
    print(f"targets: first < 10 ms {'OK' if ok_first else 'MISSED'}; "
          f"memoised < 20 us {'OK' if ok_memo else 'MISSED'}")
    return 0 if ok_first and ok_memo else 1


if __name__ == "__main__":
    sys.exit(main())
