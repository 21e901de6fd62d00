"""A user's script with shared state, changed only in its import, on a loaded Parsl config:
Manager proxies in a Pool's initargs, and a Lock, a bounded Queue, an Event, a Semaphore and
a JoinableQueue passed to pool tasks on workers that cannot see this host's Python.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable). Prints one JSON line.
"""

import json
import os
import sys

import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

import parsl_poncho.multiprocessing as mp
from parsl_poncho import EnvOptions, PonchoExecutor, SizingOptions, WorkerOptions

SHARED = {}


def keep(params, results):
    """The initializer: the driver's proxies, kept in module globals."""
    SHARED.update(params=params, results=results)


def step(args):
    i, lock, out, go, slots, todo = args
    if not go.wait(60):
        raise RuntimeError("the event was never set")
    with slots:
        with lock:  # a read-modify-write of two keys, made safe by the lock
            SHARED["results"]["total"] = SHARED["results"].get("total", 0) + i
        SHARED["results"][i] = i * SHARED["params"]["scale"]
    out.put((i, os.getpid()), timeout=60)
    item = todo.get(timeout=60)
    todo.task_done()
    import redis

    return {"item": item, "prefix": sys.prefix, "redis": redis.__file__,
            "saw_checkout": os.path.exists(os.environ.get("CHECKOUT", "/nonexistent")
                                           + "/parsl_poncho"),
            "pyenv": os.listdir("/root/.pyenv") if os.path.isdir("/root/.pyenv") else None}


def main():
    executor = PonchoExecutor(
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 2",
                              server_idle_timeout=30),
        sizing=SizingOptions(scaling_cores_per_worker=2),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    report = {}
    with parsl.load(config):
        manager = mp.Manager()
        params, results = manager.dict(scale=10), manager.dict()
        lock, out, go = mp.Lock(), mp.Queue(maxsize=3), mp.Event()
        slots, todo = mp.Semaphore(2), mp.JoinableQueue()
        n = 8
        for i in range(n):
            todo.put(f"job-{i}")
        go.set()
        with mp.Pool(initializer=keep, initargs=(params, results)) as pool:
            pending = pool.map_async(step, [(i, lock, out, go, slots, todo) for i in range(n)],
                                     chunksize=1)
            report["out"] = sorted(out.get(timeout=600)[0] for _ in range(n))
            report["calls"] = pending.get(timeout=600)
        todo.join()
        report["results"] = {str(k): v for k, v in results.items()}
        store = mp.get_store()
        report["url"] = store.url
        report["server_pid"] = int(store.client().info()["process_id"])
        manager.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
