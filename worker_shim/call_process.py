"""The processes that run a function server's calls, forked ahead of time by a forker process.

Imported by function_server.py, which poncho_serve copies beside it; standard library only
(run_function.py, imported in a call's process, needs cloudpickle).

Why a forker: forking the server's preloaded heap takes ~7 ms with scikit-learn loaded, and the
process's exit as long again. A call should not wait for either, and the server's loop should not
stop answering other calls while a fork runs. So the server forks one *forker* right after
preloading. The forker keeps SPARES *spares* ready: forks of the preloaded heap that have already
done what a call's process does that does not depend on the call (PR_SET_PDEATHSIG, their own
process group, a fresh Python's signal handlers, stdin /dev/null, every other fd closed,
tempfile's cached dir reset) and then wait on a socket; numpy's global RNG is reseeded by the
forker just before each fork, so each spare starts with a stream of its own. The server hands a
call to a spare (Task: the client's cwd, stdout and stderr as fds, its environ and FN RESULT
argv) and the spare becomes the call's process: each spare serves one call, like a fresh fork.

Control socket between forker and server (SOCK_SEQPACKET, one message each):
    forker -> server  b"spare PID"    with one fd: the server's end of spare PID's socket
    forker -> server  b"ended PID exit N UTIME STIME MAXRSS_KB" (or "signal N ...")
                                      wait4 of spare PID, after it served a call or not
    forker -> server  b"nofork REASON" a spare cannot be forked (the calls waiting are refused)
    server -> forker  b"took PID"     spare PID has a call: make another
    server -> forker  b"stop"         the server is stopping: fork no more, keep reporting
EOF on it (the server is done or gone): the forker exits; PR_SET_PDEATHSIG kills it, and then its
calls, if the server dies. A call's process reports its outcome on the server's done pipe just
before _exit ("PID exit N ..."), so its client need not wait for the teardown of a big heap; a
spare that got a call it cannot run writes "PID nocall" there (its client runs it in regular
mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import resource
import selectors
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

PR_SET_PDEATHSIG = 1
#: Spares kept ready: two calls arriving together (a 2-core worker) both find one.
SPARES = 2
_libc = ctypes.CDLL(None, use_errno=True)


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


def close_fds_except(*keep: int) -> None:
    """Close every fd above 2 but ``keep``: nothing of the server's (another call's reply pipe,
    its FIFOs) may stay open in a process that outlives it or runs user code."""
    for fd in [int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2]:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Task:
    """What a call's process needs from its client, gathered by the server from /proc."""

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

    def context(self) -> bytes:
        """What goes to the spare beside the three fds."""
        return pickle.dumps((self.client, self.client_start, self.environ, self.argv))


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


def outcome_of(status: int, usage: resource.struct_rusage) -> str:
    """The reply line for a process that ended with wait status ``status``."""
    if os.WIFSIGNALED(status):
        ended = f"signal {os.WTERMSIG(status)}"
    else:
        ended = f"exit {os.waitstatus_to_exitcode(status)}"
    return f"{ended} {usage.ru_utime:.6f} {usage.ru_stime:.6f} {usage.ru_maxrss}"


# ---------------------------------------------------------------------------------------------
# the forker (a child of the server)


def start_forker(done_w: int) -> tuple[int, socket.socket]:
    """Fork the forker; (its pid, the server's end of the control socket).

    :raises OSError: when the fork fails.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.set_inheritable(False)
    server = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            code = Forker(server, theirs, done_w).run()
        finally:
            os._exit(code)
    theirs.close()
    ours.setblocking(False)
    return pid, ours


class Forker:
    """Keep SPARES spares forked; tell the server about each, and how each ended."""

    def __init__(self, server: int, control: socket.socket, done_w: int) -> None:
        self.server = server
        self.control = control
        self.done_w = done_w
        self.idle: set[int] = set()  # spares the server has not handed a call yet
        self.pid = os.getpid()
        self.stopping = False  # the server said "stop", or is gone

    def run(self) -> int:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.server:
            return 0
        close_fds_except(self.control.fileno(), self.done_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the server decides; its running calls need us
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        while True:
            while len(self.idle) < SPARES and not self.stopping:
                if not self.fork_spare():
                    break
            short = len(self.idle) < SPARES and not self.stopping
            for key, _ in selector.select(1.0 if short else None):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
                elif not self.read_control():
                    return 0
            self.reap()

    def fork_spare(self) -> bool:
        """Fork one spare and announce it; False when that failed (retried a second later)."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            return self.cannot_fork(exc)
        reseed_numpy()
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            return self.cannot_fork(exc)
        if pid == 0:
            code = 20
            try:
                ours.close()
                code = run_spare(theirs, self.pid, self.done_w)
            finally:
                os._exit(code)
        theirs.close()
        try:
            socket.send_fds(self.control, [b"spare %d" % pid], [ours.fileno()])
        except OSError:  # the server is gone: stop forking, run() sees EOF
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.stopping = True
            return False
        finally:
            ours.close()
        self.idle.add(pid)
        return True

    def cannot_fork(self, exc: OSError) -> bool:
        with contextlib.suppress(OSError):
            self.control.send(f"nofork {exc.strerror}".encode())
        return False

    def read_control(self) -> bool:
        """Act on the server's messages; False at EOF (the server is done)."""
        try:
            message = self.control.recv(256)
        except OSError:
            return False
        if not message:
            return False
        word, _, pid = message.decode("ascii", "replace").partition(" ")
        if word == "stop":
            self.stopping = True
        elif word == "took" and pid.isdigit():
            self.idle.discard(int(pid))
        return True

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.idle.discard(pid)
            with contextlib.suppress(OSError):
                self.control.send(f"ended {pid} {outcome_of(status, usage)}".encode())


# ---------------------------------------------------------------------------------------------
# a spare, then the call's process


def run_spare(sock: socket.socket, forker: int, done_w: int) -> int:
    """In a spare: get ready, wait for a call, run it; returns the exit status."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != forker:
        return 0
    os.setpgid(0, 0)  # the server kills the call with its process group if its client dies
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    close_fds_except(sock.fileno(), done_w)
    reset_process_state()
    try:
        message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
    except (OSError, KeyboardInterrupt):
        return 0
    sock.close()
    if not message:
        return 0  # the server let this spare go
    try:
        client, client_start, environ, argv = pickle.loads(message)
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} fds")
    except Exception:  # noqa: BLE001 - whatever it is, the client reruns the call elsewhere
        os.write(done_w, f"{os.getpid()} nocall\n".encode())
        return 20
    task = Task(client, client_start, -1, *fds, environ=environ, argv=argv)
    code = run_call(task)
    with contextlib.suppress(BaseException):
        answer_before_exit(done_w, code)
    return code


def run_call(task: Task) -> int:
    """Become the task's process (output, cwd, environment, argv) and run the call."""
    try:
        os.dup2(task.out_fd, 1)
        os.dup2(task.err_fd, 2)
        os.fchdir(task.cwd_fd)
        task.close_inputs()
        set_environ(task.environ)
        resize_thread_pools(task.environ)
        sys.argv = ["run_function.py", *task.argv]
        sys.path[0] = os.getcwd()
        import run_function

        code = run_function.main(list(task.argv))
    except BaseException as exc:  # noqa: B036 - the process must _exit, whatever happens
        code = 20
        with contextlib.suppress(BaseException):
            print(f"function_server.py: error in the call's process: {exc!r}", file=sys.stderr)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def set_environ(new: dict[bytes, bytes]) -> None:
    """Make os.environ ``new``, changing the mapping only where it differs (a task's environment
    is mostly the server's: clear() and update() cost ~1 ms of copy-on-write faults in a big
    heap); the C environment gets every value again, in case a library changed it."""
    current = os.environb
    for name in [name for name in current if name not in new]:
        del current[name]
    for name, value in new.items():
        if current.get(name) != value:
            current[name] = value
        else:
            os.putenv(name, value)


# Thread pools: BLAS and OpenMP size theirs when they load, from the environment of the task
# that started the server. A call whose task asks for another size (the executor sets these
# from its cores) gets its pools resized with threadpoolctl, if the environment has it
# (scikit-learn depends on it); the controller that finds the libraries is made once, in the
# server.
POOL_VARS = (("OPENBLAS_NUM_THREADS", "blas"), ("MKL_NUM_THREADS", "blas"),
             ("OMP_NUM_THREADS", "openmp"))
_pools: dict[str, Any] = {"controller": None, "server": {}}


def prepare_thread_pools() -> str:
    """In the server, after preloading: what the call's processes need to resize thread pools;
    returns what it found, for the log."""
    try:
        import threadpoolctl

        controller = threadpoolctl.ThreadpoolController()
    except Exception as exc:  # noqa: BLE001 - no threadpoolctl (or it failed): pools stay
        return f"not resized per call ({type(exc).__name__}: {exc})"
    _pools["controller"] = controller
    _pools["server"] = {var: os.environ.get(var) for var, _ in POOL_VARS}
    found = ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in controller.info())
    return f"resized per call from {', '.join(v for v, _ in POOL_VARS)} ({found or 'none yet'})"


def resize_thread_pools(environ: dict[bytes, bytes]) -> None:
    """Give the loaded thread pools the size the task's variables ask for, where they differ
    from the server's."""
    controller = _pools["controller"]
    if controller is None:
        return
    limits: dict[str, int] = {}
    for var, api in POOL_VARS:
        value = environ.get(var.encode(), b"").decode("ascii", "replace")
        if value != (_pools["server"].get(var) or "") and value.isdigit() and int(value) > 0:
            limits.setdefault(api, int(value))
    if limits:
        controller.limit(limits=limits)


def answer_before_exit(done_w: int, code: int) -> None:
    """Tell the server the call's outcome, which it passes on to the client at once; a process
    that dies before this (a crash, os._exit) is answered when the forker reaps it."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    os.write(done_w, f"{os.getpid()} exit {code} {me.ru_utime:.6f} "
                     f"{me.ru_stime:.6f} {me.ru_maxrss}\n".encode())


def reset_process_state() -> None:
    """What a fork carries over from the server that the call must not see: tempfile's cached
    dir (Python's own random module is reseeded by its at-fork hook), and numpy's global RNG
    if the forker could not reseed it."""
    import tempfile

    tempfile.tempdir = None  # re-read TMPDIR from the task's environment
    if not _numpy_rng["reseeded"]:
        with contextlib.suppress(Exception):
            sys.modules["numpy.random"].seed()


MT19937_KEY_BYTES = 624 * 4
_numpy_rng = {"reseeded": True}  # False: the forker's reseed failed, so each spare reseeds


def reseed_numpy() -> None:
    """Give numpy's global RNG a fresh state from the OS, in the forker, for the spare it forks
    next: done here, where numpy's code and state are already paged in, it costs ~0.1 ms; in
    each call's process it cost ~2 ms of page faults."""
    numpy, nprandom = sys.modules.get("numpy"), sys.modules.get("numpy.random")
    if numpy is None or nprandom is None:
        return
    try:  # MT19937's whole key from the OS, not 128 bits
        nprandom.seed(numpy.frombuffer(os.urandom(MT19937_KEY_BYTES), dtype=numpy.uint32))
    except Exception:  # noqa: BLE001 - whatever numpy says, the spare reseeds itself instead
        _numpy_rng["reseeded"] = False
    else:
        _numpy_rng["reseeded"] = True
