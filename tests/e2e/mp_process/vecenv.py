"""A SubprocVecEnv-like program (OpenAI baselines' vectorised environments, as PPO uses them):
one long-lived Process per environment, each with a duplex Pipe, one send(('step', a)) /
recv() round trip per environment per step, then close and join.

Written for the standard library; tests/test_mp_e2e.py runs it as is and with only its import
line changed. Environment: STEPS (default 300), ENVS (default 4). Prints one JSON line.
"""

import json
import multiprocessing as mp
import os
import sys
import time

import gymnasium as gym
import numpy as np


def worker(remote, parent_remote, seed):
    parent_remote.close()
    env = gym.make("CartPole-v1")
    obs, _info = env.reset(seed=seed)
    while True:
        cmd, data = remote.recv()
        if cmd == "step":
            obs, reward, terminated, truncated, _info = env.step(int(data))
            done = terminated or truncated
            if done:
                obs, _info = env.reset()
            remote.send((obs, reward, done))
        elif cmd == "where":
            remote.send({"prefix": sys.prefix, "pid": os.getpid(),
                         "pyenv": os.listdir("/root/.pyenv")
                         if os.path.isdir("/root/.pyenv") else None})
        elif cmd == "close":
            env.close()
            remote.close()
            break


class SubprocVecEnv:
    def __init__(self, n, seed):
        ctx = mp.get_context("spawn")
        self.remotes, work_remotes = zip(*[ctx.Pipe() for _ in range(n)])
        self.processes = [ctx.Process(target=worker, args=(work, remote, seed + i), daemon=True)
                          for i, (work, remote) in enumerate(zip(work_remotes, self.remotes))]
        for process in self.processes:
            process.start()
        for work in work_remotes:
            work.close()

    def step(self, actions):
        for remote, action in zip(self.remotes, actions):
            remote.send(("step", action))
        results = [remote.recv() for remote in self.remotes]
        obs, rewards, dones = zip(*results)
        return np.stack(obs), np.array(rewards), np.array(dones)

    def ask(self, cmd):
        for remote in self.remotes:
            remote.send((cmd, None))
        return [remote.recv() for remote in self.remotes]

    def close(self):
        for remote in self.remotes:
            remote.send(("close", None))
        for process in self.processes:
            process.join()
        return [process.exitcode for process in self.processes]


def main():
    steps, n = int(os.environ.get("STEPS", "300")), int(os.environ.get("ENVS", "4"))
    start = time.perf_counter()
    venv = SubprocVecEnv(n, seed=42)
    where = venv.ask("where")
    first = time.perf_counter()
    rng = np.random.default_rng(7)
    totals, episodes, last = np.zeros(n), np.zeros(n, dtype=int), None
    for _ in range(steps):
        last, rewards, dones = venv.step(rng.integers(0, 2, size=n))
        totals += rewards
        episodes += dones
    stepped = time.perf_counter()
    exitcodes = venv.close()
    print(json.dumps({"totals": totals.tolist(), "episodes": episodes.tolist(),
                      "last_obs": last.tolist(), "exitcodes": exitcodes, "where": where,
                      "seconds": {"start": first - start, "steps": stepped - first,
                                  "total": time.perf_counter() - start}}))


if __name__ == "__main__":
    main()
