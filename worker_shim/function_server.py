"""Serve function calls for one (environment, user) on a node: preload once, fork once per call.

Usage (started detached by poncho_serve with the environment's python; not run by hand):
    python DIR/function_server.py --dir DIR --env PREFIX [--idle SECS] [--preload MOD,MOD,...]

DIR is PREFIX.server-v1 (0700) beside the unpacked environment PREFIX in the node cache (with a
code layer, PREFIX.server-v1-<layer>: the layer $PARSL_PONCHO_CODE_LAYER is on its sys.path);
poncho_serve copies this file and run_function.py into it. The server imports cloudpickle,
run_function (its own copy) and each --preload module (a failing one is logged and skipped),
gc.freeze()s the heap so forked children share it copy-on-write, then writes DIR/ready.

Protocol (all on Linux /proc). A client's subshell, whose fd 0 is the server's alive FIFO (opened
as /proc/<server>/fd/<N>, N from DIR/ready) and whose fd 5 is the pipe its parent reads the reply
from, writes "<client pid>\n" to DIR/requests (atomic under PIPE_BUF; the server holds the FIFO
O_RDWR, never sees EOF). The server checks that the client is its uid's, finds the client's child
whose fd 0 is its alive FIFO (/proc/<client>/task/<client>/children), opens /proc/<that>/fd/5
(must be a pipe of our uid), SIGKILLs that subshell (now only the server holds the pipe's write
end) and hands the call to a process forked ahead of time (a spare: its cwd, stdout and stderr
fds go over a socketpair), else forks one. The call's process never holds the reply pipe: it
reports its outcome on the server's done pipe just before _exit (so nobody waits for the
teardown of a big heap), or the server learns it from wait4; the server then writes one line
and closes the pipe:
    exit N UTIME STIME MAXRSS_KB     the child exited with status N (run_function.py's codes)
    signal N UTIME STIME MAXRSS_KB   the child was killed by signal N
    retry                            the server is shutting down: start a new one, ask again
    refused REASON                   cannot serve this call: run it in regular mode
If the server dies the pipe closes with no line (and the alive FIFO reaches EOF): the client
reruns the call in regular mode. The call's context comes from /proc/<client>: cwd, environ,
the last two words of cmdline (FN.pkl RESULT.pkl), fd/1 and fd/6 (the client's stdout and its
saved stderr) reopened O_WRONLY|O_APPEND. Trust: DIR is 0700 in the 0700 node cache, and each
request is checked for the server's uid; others' are refused and logged.

The child: own process group, PR_SET_PDEATHSIG SIGKILL, a fresh python's signal handlers, stdin
/dev/null, other fds closed, the sandbox's cwd/environ/argv/sys.path[0], numpy's global RNG
reseeded, tempfile's cached dir reset; it _exits with run_function.main([FN, RESULT]). Children
are reaped with os.wait4 on a SIGCHLD wakeup fd in a selectors loop.

Every 0.5 s: kill (with its process group) the child of a client that died (pid gone or start
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
import contextlib
import ctypes
import fcntl
import gc
import importlib
import os
import pickle
import resource
import selectors
import shutil
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TICK = 0.5
PR_SET_PDEATHSIG = 1
WQ_WORKER_COMM = "work_queue_work"
EVICTED = "the environment was evicted"


def log(message: str) -> None:
    """One timestamped line in the log (the server's stderr)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp}.{int(time.time() * 1000) % 1000:03d} [{os.getpid()}] {message}\n")
    sys.stderr.flush()


class Refused(Exception):
    """A request that cannot be served; the message is the reason."""


def proc_stat(pid: int) -> tuple[int, int]:
    """(ppid, start time in clock ticks) of ``pid`` from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` still runs and is the same process (pids get reused)."""
    try:
        return proc_stat(pid)[1] == start
    except (OSError, IndexError, ValueError):
        return False


def children(pid: int) -> list[int]:
    """The child pids of ``pid`` (from /proc/<pid>/task/<pid>/children, else a scan of /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    found = []
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if name.isdigit() and proc_stat(int(name))[0] == pid:
                found.append(int(name))
    return found


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass
class Task:
    """What the child needs from its client, gathered by the server before the fork."""

    client: int
    client_start: int
    reply_fd: int
    cwd_fd: int = -1
    out_fd: int = -1
    err_fd: int = -1
    environ: dict[bytes, bytes] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    child: int = 0

    def close_inputs(self) -> None:
        for fd in (self.cwd_fd, self.out_fd, self.err_fd):
            if fd >= 0:
                os.close(fd)
        self.cwd_fd = self.out_fd = self.err_fd = -1


def read_client(task: Task) -> None:
    """Fill ``task`` from /proc/<client>: cwd, environment, FN RESULT, stdout and stderr."""
    base = f"/proc/{task.client}"
    with open(f"{base}/cmdline", "rb") as f:
        argv = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0")[:-1]]
    if len(argv) < 2:
        raise Refused(f"cannot read the command line of client {task.client}")
    task.argv = argv[-2:]
    with open(f"{base}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            name, sep, value = item.partition(b"=")
            if sep and name:
                task.environ[name] = value
    task.cwd_fd = os.open(f"{base}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        task.out_fd = os.open(f"{base}/fd/1", flags)
        task.err_fd = os.open(f"{base}/fd/6", flags)  # poncho_serve's copy of its stderr
    except OSError as exc:
        raise Refused(
            f"cannot open the task's stdout/stderr through /proc ({exc.strerror})"
        ) from exc


class Server:
    """The loop: requests in, one forked child per call, replies out, housekeeping."""

    def __init__(self, directory: str, prefix: str, idle: float) -> None:
        self.dir = directory
        self.prefix = prefix
        self.idle = idle
        self.tasks: dict[int, Task] = {}
        self.workers: dict[int, int] = {}  # Work Queue worker pid -> start time
        self.parents: dict[int, int | None] = {}  # client ppid -> its worker pid or None
        self.last_activity = time.monotonic()
        self.stopping = ""
        self.signalled = ""
        self.pending = b""
        self.pending_done = b""
        self.libc: Any = None
        self.watched: list[tuple[str, os.stat_result]] = []  # ready files of env and code
        self.lock_fd = -1
        self.spare: tuple[int, socket.socket] | None = None

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
        """FIFOs, wakeup pipe, signal handlers, eviction watch; then the ready marker."""
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.requests_fd = self.make_fifo("requests")
        self.alive_fd = self.make_fifo("alive")
        self.alive_stat = os.fstat(self.alive_fd)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.done_r, self.done_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # children: "answered"
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
        self.start_child(task)

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

    def start_child(self, task: Task) -> None:
        """Hand ``task`` to the spare process forked ahead of time, else fork one for it."""
        pid = self.hand_to_spare(task)
        if pid == 0:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                task.close_inputs()
                self.reply(task.reply_fd, f"refused cannot fork: {exc.strerror}")
                return
            if pid == 0:
                os._exit(self.run_child(task))
        task.child = pid
        task.close_inputs()
        self.tasks[pid] = task
        self.last_activity = time.monotonic()

    # A spare: forked while the server is idle, so a call does not wait for the fork of a big
    # preloaded heap (~12 ms with scikit-learn loaded). It is used once, like a fresh fork.
    def make_spare(self) -> None:
        """Fork the next call's process ahead of time; it waits on a socket for its task."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            log(f"cannot fork a spare process: {exc.strerror}")
            ours.close()
            theirs.close()
            return
        if pid == 0:
            ours.close()
            os._exit(self.run_spare(theirs))
        theirs.close()
        self.spare = (pid, ours)

    def hand_to_spare(self, task: Task) -> int:
        """The spare's pid once it has ``task`` (its fds and context), or 0 if there is none."""
        if self.spare is None:
            return 0
        (pid, sock), self.spare = self.spare, None
        context = pickle.dumps((task.client, task.client_start, task.environ, task.argv))
        try:
            socket.send_fds(sock, [context], [task.cwd_fd, task.out_fd, task.err_fd])
        except OSError as exc:
            log(f"the spare process {pid} is gone ({exc.strerror}): forking instead")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            pid = 0
        sock.close()
        return pid

    def drop_spare(self) -> None:
        if self.spare is not None:
            self.spare[1].close()  # the spare reads EOF and exits
            self.spare = None

    def run_spare(self, sock: socket.socket) -> int:
        """In a spare: let go of the server's fds, wait for a task, then run it."""
        self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.pid:
            return 0
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for fd in [int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2]:
            if fd not in (sock.fileno(), self.done_w):  # no other call's reply pipe stays open
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
        except OSError:
            return 0
        if not message or len(fds) != 3:
            return 0
        for fd in fds:
            os.set_inheritable(fd, False)  # recv_fds does not set close-on-exec
        client, client_start, environ, argv = pickle.loads(message)
        task = Task(client, client_start, -1, fds[0], fds[1], fds[2], environ, argv)
        return self.run_child(task)

    def run_child(self, task: Task) -> int:
        """In the child: become the task's process and run the call; never returns normally."""
        try:
            self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.pid:
                return 20
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(task.out_fd, 1)
            os.dup2(task.err_fd, 2)
            os.fchdir(task.cwd_fd)
            # The reply pipe is the server's to write: anything the call forks (a pool, a
            # daemon) must not hold it, or the client would wait for that process to end.
            for fd in [int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2]:
                if fd != self.done_w:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            os.environ.clear()
            os.environb.update(task.environ)
            sys.argv = ["run_function.py", *task.argv]
            sys.path[0] = os.getcwd()
            reset_process_state()
            import run_function

            code = run_function.main(list(task.argv))
        except BaseException as exc:  # noqa: B036 - the child must _exit, whatever happens
            code = 20
            with contextlib.suppress(BaseException):
                print(f"function_server.py: error in the call's process: {exc!r}", file=sys.stderr)
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
            self.answer_before_exit(task, code)
        return code

    def answer_before_exit(self, task: Task, code: int) -> None:
        """In the child: tell the server the call's outcome, which it passes on at once.

        Tearing down a big preloaded heap at _exit takes as long as the fork (~12 ms with
        scikit-learn loaded): the client need not wait for it. A child that dies before this
        point (a crash, os._exit) is answered by the server after wait4.
        """
        me = resource.getrusage(resource.RUSAGE_SELF)
        os.write(self.done_w, f"{os.getpid()} exit {code} {me.ru_utime:.6f} "
                              f"{me.ru_stime:.6f} {me.ru_maxrss}\n".encode())

    def read_done(self) -> None:
        """Answer the clients of children that reported their outcome (then EOF for them)."""
        with contextlib.suppress(BlockingIOError):
            data = self.pending_done + os.read(self.done_r, 65536)
            *lines, self.pending_done = data.split(b"\n")
            for line in lines:
                pid, _, outcome = line.decode("ascii", "replace").partition(" ")
                task = self.tasks.get(int(pid)) if pid.isdigit() else None
                if task is not None and task.reply_fd >= 0:
                    self.reply(task.reply_fd, outcome)
                    task.reply_fd = -1

    def reap(self) -> None:
        while self.tasks:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.read_done()  # an answer still in the pipe beats the one below
            task = self.tasks.pop(pid, None)
            if task is None:
                if self.spare is not None and self.spare[0] == pid:
                    self.drop_spare()  # died waiting: the loop forks another
                continue
            if task.reply_fd >= 0:
                if os.WIFSIGNALED(status):
                    outcome = f"signal {os.WTERMSIG(status)}"
                else:
                    outcome = f"exit {os.waitstatus_to_exitcode(status)}"
                self.reply(task.reply_fd, f"{outcome} {usage.ru_utime:.6f} {usage.ru_stime:.6f} "
                                          f"{usage.ru_maxrss}")
            self.last_activity = time.monotonic()

    def housekeeping(self) -> None:
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
        if self.tasks:
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
        self.read_requests()

    def serve(self) -> None:
        self.pid = os.getpid()
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
                else:
                    self.read_requests()
            self.reap()
            if self.signalled:
                self.begin_stop(f"signal {self.signalled}")
            if time.monotonic() >= next_tick:
                self.housekeeping()
                next_tick = time.monotonic() + TICK
            if self.spare is None and not self.stopping:
                self.make_spare()
        self.drop_spare()
        self.read_requests()
        if self.stopping == EVICTED and self.take_lock():  # no newer server uses DIR
            shutil.rmtree(self.dir, ignore_errors=True)


def reset_process_state() -> None:
    """What a fork would carry over from the server: numpy's global RNG, tempfile's cached dir."""
    import tempfile

    tempfile.tempdir = None  # re-read TMPDIR from the task's environment
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None:
        with contextlib.suppress(Exception):
            nprandom.seed()


def preload(modules: list[str]) -> None:
    """Import cloudpickle, run_function and ``modules``; a failing one is logged and skipped."""
    for name in ["cloudpickle", "run_function", *modules]:
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
    server = Server(args.dir, args.env, args.idle)
    if not server.take_lock():
        log(f"another function server already runs in {server.dir}: exiting")
        return 3
    log(f"start: env {server.prefix}, idle {args.idle:g}s, python {sys.version.split()[0]}")
    with open(os.path.join(server.dir, "pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    preload([m.strip() for m in args.preload.split(",") if m.strip()])
    gc.collect()
    gc.freeze()
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
