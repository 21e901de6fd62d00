"""A POET-like program (Uber's POET / Evolution Strategies, as the seed paper ran it): two
Manager().dict() proxies in a Pool's initargs, an initializer that builds a noise table with
multiprocessing.Array, and hundreds of apply_async per iteration, the driver writing the
dicts between iterations.

Written for the standard library; tests/test_mp_e2e.py runs it as is and with only its import
line changed. Environment: ITERS (default 3), POP (apply_async per iteration, default 200).
Prints one JSON line.
"""

import ctypes
import json
import multiprocessing as mp
import os
import time

import numpy as np

NOISE_SIZE, NOISE_SEED, DIM, SIGMA, LR = 100_000, 123, 32, 0.05, 0.02
NOISE = THETAS = CONFIGS = None


def noise_table():
    return np.random.RandomState(NOISE_SEED).randn(NOISE_SIZE).astype(np.float32)


def init_worker(thetas, configs):
    """Once per worker: the noise table in shared memory, and the proxies in globals."""
    global NOISE, THETAS, CONFIGS
    shared = mp.Array(ctypes.c_float, NOISE_SIZE)
    NOISE = np.ctypeslib.as_array(shared.get_obj())
    NOISE[:] = noise_table()
    THETAS, CONFIGS = thetas, configs


def fitness(theta, target):
    return -float(np.sum((theta - target) ** 2))


def evaluate(key, index):
    """One antithetic pair: the fitness of theta + sigma * eps and of theta - sigma * eps."""
    theta = np.asarray(THETAS[key], dtype=np.float32)
    target = np.asarray(CONFIGS[key]["target"], dtype=np.float32)
    eps = NOISE[index:index + DIM]
    return fitness(theta + SIGMA * eps, target), fitness(theta - SIGMA * eps, target)


def main():
    iters, pop = int(os.environ.get("ITERS", "3")), int(os.environ.get("POP", "200"))
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    thetas, configs = manager.dict(), manager.dict()
    keys = ["flat", "hills"]
    for n, key in enumerate(keys):
        thetas[key] = [0.0] * DIM
        configs[key] = {"target": [float(n + 1)] * DIM}
    noise, rs, history = noise_table(), np.random.RandomState(0), []
    with ctx.Pool(2, initializer=init_worker, initargs=(thetas, configs)) as pool:
        for _ in range(iters):
            jobs = {key: rs.randint(0, NOISE_SIZE - DIM, size=pop // len(keys)) for key in keys}
            results = {key: [pool.apply_async(evaluate, (key, int(i))) for i in idx]
                       for key, idx in jobs.items()}
            for key, idx in jobs.items():
                pairs = np.array([r.get() for r in results[key]], dtype=np.float32)
                weights = pairs[:, 0] - pairs[:, 1]
                grad = sum(w * noise[i:i + DIM] for w, i in zip(weights, idx)) / (
                    len(idx) * SIGMA)
                theta = np.asarray(thetas[key], dtype=np.float32) + LR * grad
                thetas[key] = theta.tolist()
                history.append(fitness(theta, np.asarray(configs[key]["target"])))
    final = {key: thetas[key] for key in keys}
    manager.shutdown()
    print(json.dumps({"history": history, "final": final,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
