"""A one-node Slurm cluster on the test host: munged, slurmctld and slurmd started and stopped.

``running_cluster(root)`` writes a munge key and a ``slurm.conf`` under ``root``, starts the
three daemons in the foreground as child processes (so their pids are ours), waits until
``sinfo`` shows the node idle and yields a :class:`SlurmCluster`. On the way out, even when
the test failed, it cancels every job, waits for the queue to drain, stops the daemons by pid
and checks that they and any job step daemon they started are gone.

Needs root (slurmd runs jobs as their submitting user) and Debian's ``slurm-wlm`` and
``munge``. Everything the daemons write lives under ``root``, except the munge socket: munged
wants every directory above its socket searchable by all, which pytest's 0700 temp root is
not, so the socket gets a directory of its own under /tmp, removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "debug"
START_TIMEOUT = 30.0
#: Waits for an empty queue and for daemons to stop: eventual cleanup, not speed.
STOP_TIMEOUT = 60.0


class SlurmClusterError(Exception):
    """The test cluster did not come up; the message carries the daemons' log tails."""


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``env`` holds SLURM_CONF for Slurm's client programs."""

    root: Path
    conf: Path
    node: str
    partition: str
    cpus: int
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client program (sinfo, squeue, ...) against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=30, check=check)

    def queue(self) -> list[str]:
        """``squeue -h`` lines: every job the controller still knows, any state."""
        return self.run("squeue", "-h", "-o", "%i %P %T %j").stdout.splitlines()

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%t", check=False).stdout.strip()

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def write_slurm_conf(path: Path, *, root: Path, munge_socket: Path, node: str, cpus: int,
                     memory_mb: int, ports: tuple[int, int]) -> None:
    """A slurm.conf for one node running both daemons, all state under ``root``."""
    path.write_text("\n".join([
        "ClusterName=poncho-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "KillWait=5",  # a cancelled job's steps get SIGKILL 5 s after SIGTERM (default 30)
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd for a one-node cluster; stop them on exit."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(exist_ok=True)
    socket_dir = Path(tempfile.mkdtemp(prefix="poncho-munge-"))
    socket_dir.chmod(0o755)
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    cluster = SlurmCluster(root=root, conf=root / "slurm.conf", node=node,
                           partition=PARTITION, cpus=cpus)
    steps_before = _slurmstepd_pids()
    try:
        munge_socket = _start_munged(cluster, socket_dir)
        write_slurm_conf(cluster.conf, root=root, munge_socket=munge_socket, node=node,
                         cpus=cpus, memory_mb=_node_memory_mb(), ports=_free_ports(2))
        for daemon in ("slurmctld", "slurmd"):
            _start(cluster, daemon, [daemon, "-D", "-f", str(cluster.conf)])
        _wait_for(cluster, lambda: cluster.node_state() == "idle", "the node to be idle")
        yield cluster
    finally:
        try:
            _drain_queue(cluster)
        finally:
            _stop_daemons(cluster)
            shutil.rmtree(socket_dir, ignore_errors=True)
    _check_nothing_left(cluster, steps_before)


def _start_munged(cluster: SlurmCluster, socket_dir: Path) -> Path:
    """munged with a fresh 1024-byte key; returns its socket once credentials round-trip."""
    munge = cluster.root / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = socket_dir / "munge.socket"
    _start(cluster, "munged", [
        "munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
        f"--pid-file={socket_dir / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}",
        f"--log-file={cluster.root / 'log' / 'munged.log'}",
    ])
    _wait_for(cluster, lambda: _munge_round_trip(sock), "munge credentials to round-trip")
    return sock


def _munge_round_trip(sock: Path) -> bool:
    if not sock.exists():
        return False
    cred = subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True)
    if cred.returncode != 0:
        return False
    back = subprocess.run(["unmunge", "-S", str(sock)], input=cred.stdout, capture_output=True)
    return back.returncode == 0


def _start(cluster: SlurmCluster, name: str, argv: list[str]) -> None:
    out = (cluster.root / "log" / f"{name}.out").open("wb")
    with out:
        cluster.daemons[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=cluster.env, start_new_session=True)


def _wait_for(cluster: SlurmCluster, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        dead = {n: p.returncode for n, p in cluster.daemons.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            why = f"exited: {dead}" if dead else f"not after {START_TIMEOUT:.0f} s"
            raise SlurmClusterError(f"Slurm test cluster: waiting for {what}, {why}\n"
                                    f"{cluster.logs()}")
        time.sleep(0.2)


def _drain_queue(cluster: SlurmCluster) -> None:
    """Cancel every job left (a test that failed midway) and wait until squeue is empty."""
    if cluster.daemons.get("slurmctld") is None or cluster.daemons["slurmctld"].poll() is not None:
        return
    jobs = [line.split()[0] for line in cluster.queue()]
    if jobs:
        cluster.run("scancel", *jobs, check=False)
    deadline = time.monotonic() + STOP_TIMEOUT
    while cluster.queue() and time.monotonic() < deadline:
        time.sleep(0.2)


def _stop_daemons(cluster: SlurmCluster) -> None:
    """SIGTERM each daemon we started (slurmd first, munged last), SIGKILL if it lingers."""
    for name in ("slurmd", "slurmctld", "munged"):
        proc = cluster.daemons.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _check_nothing_left(cluster: SlurmCluster, steps_before: set[int]) -> None:
    alive = [f"{n} (pid {p.pid})" for n, p in cluster.daemons.items() if _pid_alive(p.pid)]
    deadline = time.monotonic() + STOP_TIMEOUT
    while (steps := _slurmstepd_pids() - steps_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive or steps:
        raise AssertionError(f"Slurm test cluster left processes running: {alive}, "
                             f"slurmstepd pids {sorted(steps)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _slurmstepd_pids() -> set[int]:
    """Pids of running job step daemons (slurmd forks one per job step; they outlive it)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                pids.add(int(proc.name))
    return pids


def _free_ports(count: int) -> tuple[int, ...]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def _node_memory_mb() -> int:
    """80 % of this host's memory: slurmd drains a node configured with more than it has."""
    total_kb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    return max(1, int(total_kb * 0.8) // 1024)
