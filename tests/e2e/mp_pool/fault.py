"""A node dies in the middle of a Pool.map: no item may be lost, none may run twice.

Two "nodes" on this host: two workers, each with its own node cache (so its own function
server), started by this script (a Parsl config with no blocks of its own). When an item starts
on node "doomed", every process of that node (worker, task clients, function server, forker,
calls: all carry NODE_NAME=doomed in their environment) is SIGKILLed, as if the machine died.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable), SIDE (a directory for the
items' side effects), SCRATCH (node caches). Prints one JSON line.
"""

import json
import os
import signal
import subprocess
import threading
import time
import uuid

import parsl
from parsl.config import Config
from parsl.providers import LocalProvider

import parsl_poncho.multiprocessing as mp
from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions

ITEMS = 12


def slow_item(args):
    """Mark the start, work a while, then leave the side effect that counts."""
    side, i = args
    node = os.environ.get("NODE_NAME", "?")
    with open(os.path.join(side, f"started-{i}-{node}-{uuid.uuid4().hex[:8]}"), "w"):
        pass
    time.sleep(1.5)
    with open(os.path.join(side, f"done-{i}-{uuid.uuid4().hex[:8]}"), "w"):
        pass
    return i * 10


def node_processes(name):
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"NODE_NAME={name}".encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def kill_node(name):
    killed = set()
    for _ in range(5):  # until nothing of it is left (a fork may race the first sweep)
        pids = node_processes(name)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def start_worker(executor, name, cores):
    cache = os.path.join(os.environ["SCRATCH"], f"node-{name}")
    env = {**os.environ, "NODE_NAME": name, "PARSL_PONCHO_WORKER_CACHE": cache}
    command = [os.environ["WORKER"], "--cores", str(cores), *executor.worker_command.split()[1:]]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def main():
    side = os.environ["SIDE"]
    executor = PonchoExecutor(
        address="127.0.0.1",
        max_retries=3,
        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(server_idle_timeout=30),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    report = {}
    with parsl.load(config):
        workers = [start_worker(executor, "doomed", 1), start_worker(executor, "healthy", 2)]

        def killer():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if any("-doomed-" in name for name in os.listdir(side)):
                    report["killed"] = kill_node("doomed")
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        with mp.Pool(3) as pool:
            report["results"] = pool.map(slow_item, [(side, i) for i in range(ITEMS)],
                                         chunksize=1)
        thread.join(10)
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
            worker.wait()
    names = os.listdir(side)
    report["done"] = {i: sum(n.startswith(f"done-{i}-") for n in names) for i in range(ITEMS)}
    report["started_on_doomed"] = sorted(n for n in names if "-doomed-" in n)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
