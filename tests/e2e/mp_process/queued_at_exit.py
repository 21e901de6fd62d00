"""A daemon Process started while no worker can take it, then the driver returns from main.
Run with run_embedded.py and WORKER=no_worker.sh (ours only: the standard library has no
queue to be left in).

Environment: MARK, the file the target writes if it ever runs; GO, the file whose creation
lets the driver return (the test first checks that the task waits in Work Queue).
Prints {"port": the Work Queue manager's port, "children": the driver's child processes}.
"""

import json
import os
import time

import psutil

import parsl_poncho.multiprocessing as mp


def mark(path):
    with open(path, "w") as f:
        f.write("ran")


def main():
    mp.Process(target=mark, args=(os.environ["MARK"],), daemon=True).start()
    port = int(mp.embedded.default_executor().worker_command.split()[-1])
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"port": port, "children": children}), flush=True)
    deadline = time.monotonic() + 300
    while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
