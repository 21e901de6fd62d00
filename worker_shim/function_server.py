"""Serve function calls for one (environment, user) on a node: preload once, fork once per call.

Usage (started detached by poncho_serve with the environment's python; not run by hand):
    python DIR/function_server.py --dir DIR --env PREFIX [--idle SECS] [--preload MOD,MOD,...]
        [--init FILE] [--max-calls N]

DIR is PREFIX.server-v1 (0700) beside the unpacked environment PREFIX in the node cache (with a
code layer, PREFIX.server-v1-<layer>: the layer $PARSL_PONCHO_CODE_LAYER is on its sys.path);
poncho_serve copies this file, call_process.py, huge_pages.py, run_function.py and pool_init.py
into it. The server imports cloudpickle, run_function, pool_init (its own copies) and each
--preload module (a failing one is logged and skipped), gc.freeze()s the heap so forked
children share it copy-on-write, puts it on huge pages when it preloaded anything
(huge_pages.py), then writes DIR/ready.
A multiprocessing.Pool's server (DIR ends in -pool-<name>, see poncho_serve --pool) also runs
the pool's initializer FILE after the preload and before the freeze (pool_init.py: once per
server, so its globals reach every call), and with --max-calls N exits after handing out N calls
(maxtasksperchild; the next call starts a new server, which runs the initializer again).
A pool's server removes its DIR when it exits for another reason (idle, workers gone).

Protocol (all on Linux /proc). A client's subshell, whose fd 0 is the server's alive FIFO (opened
as /proc/<server>/fd/<N>, N from DIR/ready) and whose fd 5 is the pipe its parent reads the reply
from, writes "<client pid>\n" to DIR/requests (atomic under PIPE_BUF; the server holds the FIFO
O_RDWR, never sees EOF). The server checks that the client is its uid's, finds the client's child
whose fd 0 is its alive FIFO (/proc/<client>/task/<client>/children), opens /proc/<that>/fd/5
(must be a pipe of our uid), SIGKILLs that subshell (now only the server holds the pipe's write
end) and hands the call to a process forked ahead of time (a spare, kept ready by the server's
one child, the forker: see call_process.py); with no spare ready, the call waits for the next,
or runs in regular mode if the forker reports it cannot fork.
The call's process never holds the reply pipe: it reports its outcome on the server's done pipe
just before _exit (so nobody waits for the teardown of a big heap), or the server learns it
when the forker reaps it; the server then writes one line and closes the pipe:
    exit N UTIME STIME MAXRSS_KB     the child exited with status N (run_function.py's codes)
    signal N UTIME STIME MAXRSS_KB   the child was killed by signal N
    retry                            the server is shutting down: start a new one, ask again
    refused REASON                   cannot serve this call: run it in regular mode
If the server dies the pipe closes with no line (and the alive FIFO reaches EOF): the client reruns
the call in regular mode; so do the clients of running calls if the forker dies (the calls die with
it, PR_SET_PDEATHSIG), and the server exits. The call's context comes from /proc/<client>: cwd,
environ, the last two words of cmdline (FN.pkl RESULT.pkl), fd/1 and fd/6 (the client's stdout and
its saved stderr) reopened O_WRONLY|O_APPEND. Trust: DIR is 0700 in the 0700 node cache, and each
request is checked for the server's uid; others' are refused and logged.

The call's process: own process group, PR_SET_PDEATHSIG SIGKILL, a fresh python's signal
handlers, stdin /dev/null, other fds closed, tempfile's cached dir reset (all before it reads its
call; numpy's global RNG was reseeded by the forker just before the fork), then the sandbox's
cwd/environ/argv/sys.path[0]; it _exits with run_function.main([FN, RESULT]). The loop is a
selectors loop over the FIFO, the done pipe, the forker's control socket and a SIGCHLD wakeup fd.

Every 0.5 s: kill (with its process group) the call of a client that died (pid gone or start
time changed); exit when idle (no call running and none for --idle seconds), when
PREFIX/.poncho-ready (or the code layer's) is gone or replaced (evicted), when no call runs and
every Work Queue worker it served (a client's ancestor whose comm starts with "work_queue_work")
is gone, or on SIGTERM/SIGINT. Exiting removes DIR/ready, DIR/pid and the FIFO names first,
answers "retry" to what is queued, waits for running calls; after an eviction it also removes DIR.

Files in DIR: ready ("<pid> <alive fd>", written atomically when serving starts), pid, requests
and alive (FIFOs), server.lock (flock'ed: one server per DIR), log (timestamped: start, preloads
ok/failed with times, refused requests, exit reason).

Exit codes: 0 normal exit, 2 usage error, 3 another server runs in DIR, 4 cannot set up DIR or no
/proc. Standard library + cloudpickle only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import gc
import importlib
import os
import selectors
import shutil
import signal
import socket
import stat
import sys
import time
from typing import Any

from call_process import (
    Refused,
    Task,
    alive,
    children,
    prepare_thread_pools,
    proc_stat,
    read_client,
    start_forker,
)
from huge_pages import collapse_and_report, reserve_arenas

TICK = 0.5
WQ_WORKER_COMM = "work_queue_work"
EVICTED = "the environment was evicted"


def log(message: str) -> None:
    """One timestamped line in the log (the server's stderr)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp}.{int(time.time() * 1000) % 1000:03d} [{os.getpid()}] {message}\n")
    sys.stderr.flush()


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Server:
    """The loop: requests in, each call to a spare process, replies out, housekeeping."""

    def __init__(self, directory: str, prefix: str, idle: float, max_calls: int = 0) -> None:
        self.dir = directory
        self.prefix = prefix
        self.idle = idle
        self.max_calls = max_calls  # 0: no limit
        self.calls = 0
        self.pool = "-pool-" in os.path.basename(directory)  # a multiprocessing.Pool's own
        self.recycled = False  # stopped by --max-calls: the pool's next server uses DIR
        self.tasks: dict[int, Task] = {}
        self.workers: dict[int, int] = {}  # Work Queue worker pid -> start time
        self.parents: dict[int, int | None] = {}  # client ppid -> its worker pid or None
        self.last_activity = time.monotonic()
        self.stopping = ""
        self.signalled = ""
        self.pending = b""
        self.pending_done = b""
        self.watched: list[tuple[str, os.stat_result]] = []  # ready files of env and code
        self.lock_fd = -1
        self.forker = 0
        self.control: socket.socket | Any = None  # the forker's control socket
        self.spares: collections.deque[tuple[int, socket.socket]] = collections.deque()
        self.waiting: collections.deque[Task] = collections.deque()  # for the next spare

    def take_lock(self) -> bool:
        if self.lock_fd < 0:
            path = os.path.join(self.dir, "server.lock")
            self.lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def make_fifo(self, name: str) -> int:
        path = os.path.join(self.dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def setup(self) -> None:
        """FIFOs, the forker, wakeup pipe, signal handlers, eviction watch; the ready marker."""
        self.requests_fd = self.make_fifo("requests")
        self.alive_fd = self.make_fifo("alive")
        self.alive_stat = os.fstat(self.alive_fd)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.done_r, self.done_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # calls: "answered"
        self.forker, self.control = start_forker(self.done_w)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        layers = [self.prefix, os.environ.get("PARSL_PONCHO_CODE_LAYER", "")]
        for ready in [os.path.join(layer, ".poncho-ready") for layer in layers if layer]:
            try:
                self.watched.append((ready, os.stat(ready)))
            except OSError:
                log(f"{ready} is missing: not watching it for eviction")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.requests_fd, selectors.EVENT_READ, "requests")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.done_r, selectors.EVENT_READ, "done")
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        tmp = os.path.join(self.dir, f"ready.tmp.{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {self.alive_fd}\n")
        os.replace(tmp, os.path.join(self.dir, "ready"))

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signalled = signal.Signals(signum).name  # acted on by the loop, not in the handler

    def read_requests(self) -> None:
        try:
            data = os.read(self.requests_fd, 65536)
        except BlockingIOError:
            return
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.handle_request(line.decode("ascii", "replace"))

    def handle_request(self, line: str) -> None:
        try:
            client = int(line)
            reply_fd = self.open_reply(client)
        except (Refused, OSError, ValueError) as exc:
            log(f"refused the request {line!r}: {exc}")
            return
        if self.stopping:
            self.reply(reply_fd, "retry")
            return
        task = Task(client, 0, reply_fd)
        try:
            task.client_start = proc_stat(client)[1]
            read_client(task)
        except (Refused, OSError, IndexError, ValueError) as exc:
            log(f"refused client {client}: {exc}")
            task.close_inputs()
            self.reply(reply_fd, f"refused {exc}")
            return
        self.note_worker(client)
        self.dispatch(task)

    def open_reply(self, client: int) -> int:
        """Find the subshell of ``client``, open its reply pipe and kill it; the pipe's fd."""
        uid = os.getuid()
        if os.stat(f"/proc/{client}").st_uid != uid:
            raise Refused(f"process {client} belongs to another user")
        for sub in children(client):
            with contextlib.suppress(OSError):
                if same_file(os.stat(f"/proc/{sub}/fd/0"), self.alive_stat):
                    break
        else:
            raise Refused(f"process {client} has no subshell reading this server's alive FIFO")
        try:
            fd = os.open(f"/proc/{sub}/fd/5", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            # now only we hold the pipe's write end; if we could not open it, the client
            # reads an empty reply and runs the call in regular mode instead of waiting
            os.kill(sub, signal.SIGKILL)
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != uid:
            os.close(fd)
            raise Refused(f"fd 5 of process {sub} is not a reply pipe of this user")
        return fd

    def reply(self, fd: int, line: str) -> None:
        with contextlib.suppress(OSError):  # the client may be gone
            os.write(fd, f"{line}\n".encode())
        os.close(fd)

    def note_worker(self, client: int) -> None:
        """Remember the Work Queue worker that ``client`` runs under, if any."""
        try:
            pid = ppid = proc_stat(client)[0]
            if ppid not in self.parents:
                self.parents[ppid] = None
                for _ in range(32):
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().startswith(WQ_WORKER_COMM):
                            self.parents[ppid] = pid
                            self.workers[pid] = proc_stat(pid)[1]
                            break
                    pid = proc_stat(pid)[0]
                    if pid <= 1:
                        break
        except (OSError, IndexError, ValueError):
            pass

    def dispatch(self, task: Task, first: bool = False) -> None:
        """Hand ``task`` to a spare; with none ready, it waits for the forker's next one (at the
        head of the queue if it was first already)."""
        while self.spares:
            pid, sock = self.spares.popleft()
            try:
                socket.send_fds(sock, [task.context()], [task.cwd_fd, task.out_fd, task.err_fd])
            except (BrokenPipeError, ConnectionError) as exc:
                log(f"the spare process {pid} is gone ({exc.strerror}): trying the next one")
                continue
            except OSError as exc:  # e.g. EMSGSIZE: an environment too big for the socket
                task.close_inputs()
                self.reply(task.reply_fd, f"refused cannot hand the call over: {exc.strerror}")
                return
            finally:
                sock.close()  # the spare keeps its end; an unused one reads EOF and exits
            self.tell_forker(f"took {pid}")
            task.child = pid
            task.close_inputs()
            self.tasks[pid] = task
            self.last_activity = time.monotonic()
            self.calls += 1
            if self.max_calls and self.calls >= self.max_calls:
                self.recycled = True
                self.begin_stop(f"handed out {self.calls} calls (--max-calls)")
            return
        if first:
            self.waiting.appendleft(task)
        else:
            self.waiting.append(task)

    def tell_forker(self, message: str) -> None:
        with contextlib.suppress(OSError):  # a forker that is gone is noticed by reap()
            self.control.send(message.encode())

    def read_control(self) -> None:
        """The forker's messages: a new spare (with its socket), a spare that ended, or that it
        cannot fork one."""
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(self.control, 256, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message:
                return  # EOF: the forker is gone, reap() acts on it
            word, _, rest = message.decode("ascii", "replace").partition(" ")
            pid_text, _, outcome = rest.partition(" ")
            if word == "spare" and pid_text.isdigit() and len(fds) == 1:
                self.add_spare(int(pid_text), socket.socket(fileno=fds.pop()))
            elif word == "ended" and pid_text.isdigit():
                self.ended(int(pid_text), outcome)
            elif word == "nofork":
                self.refuse_waiting(f"cannot fork: {rest}")
            for fd in fds:
                os.close(fd)

    def refuse_waiting(self, reason: str) -> None:
        """The forker cannot fork: the calls waiting for a spare run in regular mode."""
        log(f"{reason}: {len(self.waiting)} waiting call(s) go to regular mode")
        while self.waiting:
            task = self.waiting.popleft()
            task.close_inputs()
            self.reply(task.reply_fd, f"refused {reason}")

    def add_spare(self, pid: int, sock: socket.socket) -> None:
        if self.stopping:
            sock.close()  # the spare reads EOF and exits
            return
        self.spares.append((pid, sock))
        if self.waiting:
            self.dispatch(self.waiting.popleft(), first=True)

    def ended(self, pid: int, outcome: str) -> None:
        """A process of the forker's was reaped: answer its call, unless it already did."""
        self.read_done()  # an answer still in the pipe beats the one below
        task = self.tasks.pop(pid, None)
        if task is None:
            for spare in [s for s in self.spares if s[0] == pid]:
                self.spares.remove(spare)  # died waiting: the forker makes another
                spare[1].close()
            return
        if task.reply_fd >= 0:
            self.reply(task.reply_fd, outcome)
        self.last_activity = time.monotonic()

    def read_done(self) -> None:
        """Answer the clients of calls that reported their outcome (then EOF for them)."""
        with contextlib.suppress(BlockingIOError):
            data = self.pending_done + os.read(self.done_r, 65536)
            *lines, self.pending_done = data.split(b"\n")
            for line in lines:
                pid, _, outcome = line.decode("ascii", "replace").partition(" ")
                task = self.tasks.get(int(pid)) if pid.isdigit() else None
                if task is not None and task.reply_fd >= 0:
                    if outcome == "nocall":  # the spare could not take it: no line, the
                        os.close(task.reply_fd)  # client runs the call in regular mode
                    else:
                        self.reply(task.reply_fd, outcome)
                    task.reply_fd = -1

    def reap(self) -> None:
        """The server's only child is the forker: if it died, so did its calls (PDEATHSIG)."""
        try:
            pid, _status = os.waitpid(self.forker, os.WNOHANG)
        except ChildProcessError:
            pid = self.forker
        if pid == 0:
            return
        self.read_done()
        lost = [task for task in self.tasks.values() if task.reply_fd >= 0]
        for task in lost:
            os.close(task.reply_fd)  # no line: the client runs the call in regular mode
        self.tasks.clear()
        self.begin_stop(f"the forker process died; {len(lost)} call(s) go to regular mode")

    def housekeeping(self) -> None:
        for task in [t for t in self.waiting if not alive(t.client, t.client_start)]:
            self.waiting.remove(task)  # died before its call started
            task.close_inputs()
            os.close(task.reply_fd)
        for task in list(self.tasks.values()):
            if not alive(task.client, task.client_start):
                log(f"client {task.client} died: killing its call (pid {task.child})")
                with contextlib.suppress(OSError):
                    os.killpg(task.child, signal.SIGKILL)
        if self.stopping:
            return
        for ready, then in self.watched:
            try:
                now = os.stat(ready)
            except OSError:
                now = None
            if now is None or not same_file(now, then):
                self.begin_stop(EVICTED)
                return
        if self.tasks or self.waiting:
            return
        if time.monotonic() - self.last_activity >= self.idle:
            self.begin_stop(f"idle for {self.idle:g}s")
        elif self.workers and not any(alive(p, s) for p, s in self.workers.items()):
            self.begin_stop("every Work Queue worker it served is gone")

    def begin_stop(self, reason: str) -> None:
        """Stop taking calls: markers and FIFO names go first, then queued calls get "retry"."""
        if self.stopping:
            return
        self.stopping = reason
        log(f"exiting: {reason}")
        for name in ("ready", "pid", "requests", "alive"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, name))
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)  # a new server may start beside our last calls
        while self.waiting:  # their calls never started
            task = self.waiting.popleft()
            task.close_inputs()
            self.reply(task.reply_fd, "retry")
        while self.spares:
            self.spares.popleft()[1].close()  # the spare reads EOF and exits
        self.tell_forker("stop")  # else it would fork new spares for as long as calls drain
        self.read_requests()

    def serve(self) -> None:
        next_tick = time.monotonic() + TICK
        while not (self.stopping and not self.tasks):
            timeout = max(0.0, next_tick - time.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                elif key.data == "done":
                    self.read_done()
                elif key.data == "control":
                    self.read_control()
                else:
                    self.read_requests()
            self.reap()
            if self.signalled:
                self.begin_stop(f"signal {self.signalled}")
            if time.monotonic() >= next_tick:
                self.housekeeping()
                next_tick = time.monotonic() + TICK
        self.control.close()  # the forker reads EOF and exits
        self.read_requests()
        # an evicted env's DIR, or a pool's (its next chunk, if any, makes it again)
        done_with_dir = self.stopping == EVICTED or (self.pool and not self.recycled)
        if done_with_dir and self.take_lock():  # no newer server uses DIR
            shutil.rmtree(self.dir, ignore_errors=True)


def preload(modules: list[str]) -> None:
    """Import cloudpickle, run_function, pool_init (a pool chunk's runner) and ``modules``; a
    failing one is logged and skipped."""
    for name in ["cloudpickle", "run_function", "pool_init", *modules]:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: B036 - a preload never kills the server
            log(f"preload {name}: failed ({type(exc).__name__}: {exc}); skipped")
        else:
            log(f"preload {name}: ok ({time.perf_counter() - start:.3f}s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="function_server.py")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--idle", type=float, default=300.0)
    parser.add_argument("--preload", default="")
    parser.add_argument("--init", default="")
    parser.add_argument("--max-calls", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the server; returns its exit code."""
    args = parse_args(argv)
    args.dir, args.env = os.path.abspath(args.dir), os.path.abspath(args.env)
    if os.getpid() != os.getsid(0):
        os.setsid()
    for fd in [int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2]:
        with contextlib.suppress(OSError):
            os.close(fd)  # nothing of the first task's (or its worker's) stays open here
    os.chdir(args.dir)  # not the first task's sandbox, which goes away with it
    server = Server(args.dir, args.env, args.idle, args.max_calls)
    if not server.take_lock():
        log(f"another function server already runs in {server.dir}: exiting")
        return 3
    log(f"start: env {server.prefix}, idle {args.idle:g}s, python {sys.version.split()[0]}")
    with open(os.path.join(server.dir, "pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    modules = [m.strip() for m in args.preload.split(",") if m.strip()]
    pins = reserve_arenas() if modules or args.init else []  # a preload worth a cheaper fork
    preload(modules)
    if args.init:  # a pool's: once, before any fork, so its globals reach every call
        log(importlib.import_module("pool_init").initialize_server(args.init))
    del pins
    gc.collect()
    gc.freeze()
    if modules or args.init:
        log(f"huge pages: {collapse_and_report()}")
        log(f"thread pools: {prepare_thread_pools()}")
    try:
        server.setup()
    except OSError as exc:
        log(f"exiting: cannot set up {server.dir}: {exc}")
        return 4
    log("ready")
    server.serve()
    log("exited")
    return 0


if __name__ == "__main__":
    if not os.path.isdir("/proc/self/fd"):
        print("function_server.py: needs Linux /proc; use regular mode here", file=sys.stderr)
        sys.exit(4)
    sys.exit(main())
