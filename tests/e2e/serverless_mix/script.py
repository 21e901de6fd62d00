"""A Parsl user's script mixing serverless and regular apps, run with PonchoExecutor.

Environment: RUN_DIR, PONCHO_CACHE, WORKER (worker executable), N (calls per app).
Runs in a scratch directory (files staged to and from workers by relative path).
Prints one JSON line with every result.
"""

import json
import logging
import os
import sys

import numpy as np
import parsl
from parsl.app.app import bash_app, python_app
from parsl.config import Config
from parsl.data_provider.files import File
from parsl.providers import LocalProvider

from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions, env_hash_of

REGULAR = {"exec_mode": "regular"}


def _parent_command() -> str:
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


@python_app
def where(n, parsl_resource_specification={}):  # noqa: B006 - Parsl's convention
    """Which process ran the call, in which env, and whether state leaked from earlier calls."""
    import json as preloaded  # imported by the server before it forks

    seen = getattr(preloaded, "_poncho_calls", 0)
    preloaded._poncho_calls = seen + 1
    leaked_env = os.environ.get("PONCHO_E2E_MARK")
    os.environ["PONCHO_E2E_MARK"] = str(n)
    value = float(np.linalg.norm(np.arange(n, dtype=float)))
    return {"value": value, "prefix": sys.prefix, "parent": _parent_command(),
            "seen": seen, "leaked_env": leaked_env, "cwd": os.getcwd(),
            "saw_checkout": os.path.exists("/work/main/parsl_poncho"),
            "pyenv": os.listdir("/root/.pyenv")}


@python_app
def fail(kind):
    if kind == "value":
        raise ValueError("bad value 7")
    raise KeyError(kind)


@python_app
def shout(inputs=(), outputs=()):
    with open(inputs[0].filepath) as src, open(outputs[0].filepath, "w") as dst:
        dst.write(src.read().upper())
    return os.path.basename(os.getcwd())


@bash_app
def greet(name, stdout=None):
    return f"echo hello {name}"


def main():
    logging.basicConfig(filename=os.path.join(os.environ["RUN_DIR"], "user.log"),
                        level=logging.INFO)
    n = int(os.environ.get("N", "6"))
    executor = PonchoExecutor(
        function_exec_mode="serverless",
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
        workers=WorkerOptions(executable=os.environ["WORKER"], options="--cores 2",
                              server_idle_timeout=30),
    )
    config = Config(executors=[executor], run_dir=os.environ["RUN_DIR"], strategy="none")
    with open("in.txt", "w") as f:
        f.write("staged text\n")
    with parsl.load(config):
        serverless = [where(i + 3) for i in range(n)]
        regular = [where(i + 3, parsl_resource_specification=REGULAR) for i in range(2)]
        errors = {}
        for kind in ("value", "key"):
            try:
                fail(kind).result()
            except Exception as exc:  # noqa: BLE001 - reported
                errors[kind] = [type(exc).__name__, str(exc)]
        staged = shout(inputs=[File("in.txt")], outputs=[File("out.txt")])
        staged_sandbox = staged.result()
        staged.outputs[0].result()
        bash = greet("poncho", stdout="greet.out").result()
        report = {
            "serverless": [f.result() for f in serverless],
            "regular": [f.result() for f in regular],
            "hashes": sorted({env_hash_of(f) for f in serverless + regular}),
            "errors": errors,
            "staged": [staged_sandbox, open("out.txt").read()],
            "bash": [bash, open("greet.out").read()],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
