"""A multiprocessing.Pool script on Work Queue workers: the only change is the import.

The initializer builds a table (numpy) once per node; hundreds of calls read it. With no Parsl
config loaded, the pool starts local Work Queue workers on this host's cores; load a config with
a PonchoExecutor (parsl.load) and the same code runs on that cluster. numpy is found by the
analysis and put in the environment the calls run in; nothing is listed by hand.

Run:  .venv/bin/python examples/multiprocessing_pool.py            (on Work Queue workers)
      .venv/bin/python examples/multiprocessing_pool.py --stdlib   (the standard library's)
"""

import argparse
import time

import numpy as np

TABLE = None


def load_table(size, seed):
    """Runs once per node, before the calls: what it sets, every call sees."""
    global TABLE
    TABLE = np.random.default_rng(seed).standard_normal(size)


def window_mean(i):
    return float(np.abs(TABLE[i * 100:(i + 1) * 100]).mean())


def scaled(i, factor):
    return window_mean(i) * factor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", action="store_true", help="use the standard library's Pool")
    parser.add_argument("--windows", type=int, default=1000)
    args = parser.parse_args()
    if args.stdlib:
        import multiprocessing as mp
    else:
        import parsl_poncho.multiprocessing as mp

    start = time.perf_counter()
    with mp.Pool(initializer=load_table, initargs=(args.windows * 100, 42)) as pool:
        means = pool.map(window_mean, range(args.windows))  # default chunksize, as the stdlib's
        pending = [pool.apply_async(window_mean, (i,)) for i in range(200)]
        first = [p.get(timeout=600) for p in pending]
        largest = max(pool.imap_unordered(window_mean, range(args.windows), chunksize=50))
        doubled = pool.starmap(scaled, [(i, 2.0) for i in range(10)], chunksize=5)
    assert first == means[:200] and doubled == [2.0 * m for m in means[:10]]
    print(f"{mp.__name__}: {args.windows} windows, mean |x| {sum(means) / len(means):.4f}, "
          f"largest window mean {largest:.4f} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":  # as the standard library asks: pools start helper processes
    main()
