"""A user's multiprocessing script, changed only in its import, run on a loaded Parsl config.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable), INIT_LOG (a file the
initializer appends to), N (apply_async calls). Prints one JSON line with what it saw.
"""

import json
import os
import sys

import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

import parsl_poncho.multiprocessing as mp
from parsl_poncho import EnvOptions, PonchoExecutor, SizingOptions, WorkerOptions

TABLE = None


def build_table(size, log):
    """The initializer: a table in a module global, built once per node."""
    global TABLE
    TABLE = [i * i % 97 for i in range(size)]
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")


def look_up(i):
    return TABLE[i]


def where(_i):
    return {"prefix": sys.prefix, "saw_checkout": os.path.exists(
        os.environ.get("CHECKOUT", "/nonexistent") + "/parsl_poncho"),
        "pyenv": os.listdir("/root/.pyenv") if os.path.isdir("/root/.pyenv") else None}


def power(base, exp):
    return base ** exp


def halve(x):
    if x % 7 == 6:
        raise ArithmeticError(f"{x} is unlucky")
    return x / 2


def main():
    n = int(os.environ.get("N", "300"))
    executor = PonchoExecutor(
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 2",
                              server_idle_timeout=30),
        sizing=SizingOptions(scaling_cores_per_worker=2),
    )
    report = {}
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with parsl.load(config):
        with mp.Pool(initializer=build_table, initargs=(1000, os.environ["INIT_LOG"])) as pool:
            report["processes"] = pool._processes
            results = [pool.apply_async(look_up, (i,)) for i in range(n)]
            report["table"] = [r.get(timeout=600) for r in results]
            report["where"] = pool.map(where, range(4), chunksize=1)
            report["imap"] = list(pool.imap(look_up, range(50), chunksize=7))
            report["imap_unordered"] = sorted(pool.imap_unordered(look_up, range(50)))
            report["starmap"] = pool.starmap(power, [(b, 3) for b in range(30)], chunksize=4)
            report["map"] = pool.map(look_up, range(200), chunksize=25)
            errors = []
            failed = pool.map_async(halve, range(20), chunksize=3, error_callback=errors.append)
            failed.wait(600)
            report["error"] = [type(e).__name__ + ": " + str(e) for e in errors]
            report["error_type"] = type(failed._value).__name__
            report["remote_traceback"] = "halve" in getattr(failed._value, "remote_traceback",
                                                            "")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
