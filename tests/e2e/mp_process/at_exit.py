"""At exit, daemon Processes are terminated and the others joined, as the standard library
does: a daemon that would nap for 10 minutes, and a non-daemon one that naps 3 s and then
writes MARK. The driver just returns from main. Written for the standard library.

Environment: MARK and PIDS, paths to which the name of the multiprocessing module in use is
appended: the non-daemon's mark, and the file the processes write their pids to.
"""

import multiprocessing as mp
import os
import time


def nap_then_mark(seconds, mark, pids):
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    if mark:
        with open(mark, "w") as f:
            f.write("joined")


def main():
    pids, mark = (f"{os.environ[name]}-{mp.__name__}" for name in ("PIDS", "MARK"))
    mp.Process(target=nap_then_mark, args=(600, None, pids), daemon=True).start()
    mp.Process(target=nap_then_mark, args=(3, mark, pids)).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # both started (ours: both tasks run)
        if os.path.exists(pids) and len(open(pids).read().split()) == 2:
            break
        time.sleep(0.1)
    print("{}")


if __name__ == "__main__":
    main()
