"""Run a program as ``__main__`` with the embedded executor's workers started as WORKER (the
hidden-Python worker) and envs in PONCHO_CACHE: the program itself stays as written.

Usage: python run_embedded.py PROGRAM.py
"""

import os
import runpy
import sys

import parsl_poncho.multiprocessing as mp
from parsl_poncho import EnvOptions, WorkerOptions

mp.embedded.configure(envs=EnvOptions(cache_dir=os.environ["PONCHO_CACHE"]),
                      workers=WorkerOptions(server_idle_timeout=60,
                                            executable=os.environ["WORKER"]))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
