"""Benchmark environment delivery (issue 21): (a) time to deliver one environment to N workers
per mode against a rate-limited origin, and (b) a model of 1,000 nodes from measured inputs.

Usage: python bench/scale.py [--parts a,b,c] [--tarball ENV.tar.gz] [--rate MBPS]
                             [--workers 1,2,4,8,16] [--tasks 1000] [--rounds 3]

(a) delivery, all in one run on this host, the origin capped at --rate MB/s (default 20):
    manager            a Work Queue manager sends the tarball (a cached input) to N workers
                       (``work_queue_worker --cores 1``, one task each, which holds the
                       worker once its file is there); the workers reach it
                       through a TCP proxy that caps manager -> workers at --rate
    manager+2 foremen  the same with 2 foremen between (N/2 workers each); only manager ->
                       foremen goes through the capped proxy (a foreman is another host)
    url, N nodes       N concurrent poncho_fetch runs, each its own node cache, from the
                       executor's file server capped at --rate (= Url(serve=True))
    url, 1 node        the same N runs sharing one node cache (N workers on one node)
    shared, N nodes    N concurrent poncho_fetch runs copying from a local directory, which
                       stands in for a shared filesystem and is NOT capped
    Time = first request to the last worker holding a checked copy; unpack not included.
(b) model: 1,000 nodes (one worker each), 0.5 and 5 GB environments, per mode, from
    - measured here: the unpack rate of poncho_run (tarball MB/s, first task on a node), the
      per-worker overhead of a manager transfer and of one fetch (fits of (a));
    - stated: node and submit-host links of 10 GbE, 25 and 100 Gb/s; a shared filesystem of
      2 and 50 GB/s aggregate; 32 foremen or HTTP caches (one per rack of ~31 nodes).
    The formulas are printed with the table.

(c) dispatch: for warm serverless no-op tasks on one local worker, the CPU per task of the
    submitting process, the Work Queue manager process and the worker (bench/dispatch.py), median
    of --rounds rounds of --tasks; beside it, "before" as recorded on this host with the code
    before issue 21's dispatch work; then serverless tasks/s against Work Queue's floor (``cp``
    with a Poncho task's kinds of files, bench/serverless.py) and HTEX, all in this run.

Without --tarball the smallest env tarball in the default cache is used (python + cloudpickle,
about 17 MB); without one, pass --tarball.
"""

from __future__ import annotations

import os
import sys

# bench/multiprocessing.py is named like the standard library's package: keep this directory
# off sys.path, or ``import multiprocessing`` would import it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parsl_poncho.build._util import sha256_file  # noqa: E402
from parsl_poncho.fileserver import FileServer, _RateLimit  # noqa: E402
from parsl_poncho.shim import poncho_run_path, shim_file  # noqa: E402
from parsl_poncho.workqueue import load_work_queue  # noqa: E402

FETCH = str(shim_file("poncho_fetch"))
GB = 1e9
NODES = 1000
TIERS = 32  # foremen, or HTTP caches: one per rack of ~31 nodes
LINKS = {"10 GbE": 1.25 * GB, "25 Gb/s": 3.125 * GB, "100 Gb/s": 12.5 * GB}
SHARED_FS = {"2 GB/s": 2 * GB, "50 GB/s": 50 * GB}


def default_tarball() -> Path:
    cache = Path(os.environ.get("PARSL_PONCHO_CACHE", "~/.cache/parsl-poncho")).expanduser()
    found = sorted(cache.glob("envs/*/env-*.tar.gz"), key=lambda p: p.stat().st_size)
    if not found:
        sys.exit(f"no env tarball in {cache}/envs: run a workflow first, or pass --tarball")
    return found[0]


# -- a capped TCP proxy in front of the Work Queue manager ----------------------------------
class CappedProxy:
    """Forwards 127.0.0.1:port to the manager; manager -> worker bytes share one rate cap.

    It runs in a process of its own: Work Queue's C code holds the GIL while it sends, so a
    thread of the manager's process could never forward what the manager is sending.
    """

    def __init__(self, target: int, rate: float) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=self._serve, args=(target, rate, child), daemon=True)
        self.process.start()
        self.port = parent.recv()

    @classmethod
    def _serve(cls, target: int, rate: float, pipe: Any) -> None:
        limit = _RateLimit(rate)
        sock = socket.create_server(("127.0.0.1", 0))
        pipe.send(sock.getsockname()[1])
        while True:
            client, _ = sock.accept()
            upstream = socket.create_connection(("127.0.0.1", target))
            for src, dst, cap in ((client, upstream, None), (upstream, client, limit)):
                threading.Thread(target=cls._pump, args=(src, dst, cap), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, cap: _RateLimit | None) -> None:
        try:
            while data := src.recv(64 * 1024):
                if cap is not None:
                    cap.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.process.terminate()
        self.process.join()


def _start(args: list[str], root: Path, name: str) -> subprocess.Popen:
    (root / name).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def deliver_manager(tarball: Path, n: int, rate: float, root: Path, foremen: int = 0) -> float:
    """Seconds for a Work Queue manager to get ``tarball`` onto n workers (one task each)."""
    wq = load_work_queue()
    # A free port from the kernel's ephemeral range, not Work Queue's 1024 upwards, where
    # workers of other runs on this host look for their managers. (No password: Work Queue's
    # challenge does not pass the proxy.)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    q = wq.WorkQueue(port)
    proxy = CappedProxy(q.port, rate)
    procs = []
    try:
        targets = []
        for k in range(foremen):
            port_file = root / f"f{k}.port"
            procs.append(_start(["work_queue_worker", "--foreman",
                                 "-Z", str(port_file), "-s", str(root / f"f{k}"),
                                 "127.0.0.1", str(proxy.port)], root, f"f{k}"))
            while not port_file.is_file() or not port_file.read_text().strip():
                time.sleep(0.05)
            targets.append(int(port_file.read_text()))
        for i in range(n):
            port = targets[i % foremen] if foremen else proxy.port
            procs.append(_start(["work_queue_worker", "--cores", "1", "--memory", "500",
                                 "--disk", "2000", "-s", str(root / f"w{i}"), "127.0.0.1",
                                 str(port)], root, f"w{i}"))
        deadline = time.monotonic() + 60
        while q.stats.total_cores < n:  # every worker (through its foreman) offers its core
            q.wait(0)
            time.sleep(0.05)
            if time.monotonic() > deadline:
                raise SystemExit(f"only {q.stats.total_cores} of {n} workers connected")
        if foremen:
            time.sleep(1)
        # Each task holds its worker's one core after its file arrived, so every worker gets
        # one task and one copy (a fast task would free its worker for the next task, which
        # finds the file cached there: fewer than n transfers).
        arrived = root / "arrived"
        arrived.mkdir()
        start = time.monotonic()
        for _ in range(n):
            t = wq.Task(f"test -s env.tar.gz && touch {arrived}/$$ && sleep 60")
            t.specify_input_file(str(tarball), "env.tar.gz", cache=True)
            t.specify_cores(1)
            # Debian's Work Queue gives no worker a task whose disk exceeds its memory.
            t.specify_memory(100)
            t.specify_disk(200)
            q.submit(t)
        while len(list(arrived.iterdir())) < n:
            t = q.wait(0)
            if t is not None:
                raise SystemExit(f"delivery task ended early: {t.result} {t.output}")
            time.sleep(0.01)
        return time.monotonic() - start
    finally:
        q.shutdown_workers(0)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        proxy.close()
        del q


def deliver_fetch(source: str, sha: str, n: int, root: Path, shared_cache: bool) -> float:
    """Seconds for n concurrent poncho_fetch runs to hold a checked copy of ``source``."""
    procs = []
    start = time.monotonic()
    for i in range(n):
        cwd = root / f"t{i}"
        cwd.mkdir(parents=True)
        cache = root / ("node" if shared_cache else f"node{i}")
        procs.append(subprocess.Popen(
            ["sh", FETCH, "--cache-dir", str(cache), "--get", "env.tar.gz", sha, source],
            cwd=cwd, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"poncho_fetch failed: {err}")
    return time.monotonic() - start


def part_a(tarball: Path, counts: list[int], rate: float, tmp: Path) -> dict[str, list[float]]:
    sha = sha256_file(tarball)
    www = tmp / "www"
    www.mkdir()
    shutil.copy(tarball, www / "env.tar.gz")
    server = FileServer(www, host="127.0.0.1", rate=rate)
    url = server.start() + "/env.tar.gz"
    rows: dict[str, list[float]] = {m: [] for m in
                                    ("manager", "manager+2 foremen", "url, N nodes",
                                     "url, 1 node", "shared, N nodes")}
    gets: list[int] = []
    try:
        for n in counts:
            def fresh(name: str, n: int = n) -> Path:
                return Path(tempfile.mkdtemp(prefix=f"{name}-{n}-", dir=tmp))

            rows["manager"].append(deliver_manager(tarball, n, rate, fresh("m")))
            rows["manager+2 foremen"].append(
                deliver_manager(tarball, n, rate, fresh("f"), foremen=min(2, n)))
            rows["url, N nodes"].append(deliver_fetch(url, sha, n, fresh("u"), False))
            before = server.gets["env.tar.gz"]
            rows["url, 1 node"].append(deliver_fetch(url, sha, n, fresh("u1"), True))
            gets.append(server.gets["env.tar.gz"] - before)
            rows["shared, N nodes"].append(
                deliver_fetch(str(www / "env.tar.gz"), sha, n, fresh("s"), False))
    finally:
        server.stop()
    size = tarball.stat().st_size
    print(f"(a) delivery of one environment ({size / 1e6:.1f} MB) to N workers; origin capped "
          f"at {rate / 1e6:.0f} MB/s (shared: a local directory, not capped); seconds")
    print(f"{'mode':<20}" + "".join(f"{f'N={n}':>9}" for n in counts))
    for mode, times in rows.items():
        print(f"{mode:<20}" + "".join(f"{t:>9.2f}" for t in times))
    print(f"{'GETs, url 1 node':<20}" + "".join(f"{g:>9}" for g in gets))
    print(f"{'ideal N x size/rate':<20}" + "".join(f"{n * size / rate:>9.2f}" for n in counts))
    return rows


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares seconds per worker (time per worker when only one N was run)."""
    if len(set(xs)) < 2:
        return ys[0] / xs[0]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def unpack_rate(tarball: Path, tmp: Path, repeat: int = 3) -> float:
    """Tarball bytes per second that poncho_run unpacks (first task on a node, -s checked)."""
    sha = sha256_file(tarball)
    times = []
    for i in range(repeat):
        cache = tmp / f"unpack{i}"
        start = time.monotonic()
        subprocess.run(["sh", str(poncho_run_path()), "-e", str(tarball), "-s", sha, "--cache-dir",
                        str(cache), "-n"], check=True, capture_output=True)
        times.append(time.monotonic() - start)
        shutil.rmtree(cache, ignore_errors=True)
    return tarball.stat().st_size / statistics.median(times)


def fetch_overhead(tmp: Path, repeat: int = 10) -> float:
    """Seconds one poncho_fetch of a 1-byte file costs over HTTP (lock, curl, sha256, rename)."""
    (tmp / "tiny").mkdir()
    (tmp / "tiny" / "f").write_bytes(b"x")
    server = FileServer(tmp / "tiny", host="127.0.0.1")
    url = server.start() + "/f"
    sha = hashlib.sha256(b"x").hexdigest()
    times = []
    try:
        for i in range(repeat):
            times.append(deliver_fetch(url, sha, 1, tmp / f"tiny{i}", False))
    finally:
        server.stop()
    return statistics.median(times)


def part_b(size_measured: int, rows: dict[str, list[float]], counts: list[int], rate: float,
           unpack: float, fetch_o: float) -> None:
    wq_o = max(0.0, slope(counts, rows["manager"]) - size_measured / rate)
    print()
    print(f"(b) model: {NODES} nodes, one worker each. Measured: unpack {unpack / 1e6:.0f} MB/s "
          f"of tarball; per-worker overhead of a manager transfer {wq_o * 1000:.0f} ms (slope of "
          f"(a) minus size/rate); one fetch {fetch_o * 1000:.0f} ms (1-byte file).")
    print(f"  manager        {NODES} x (S/L + o_manager) + S/unpack       (one thread, in turn)")
    print(f"  foremen        {TIERS} x S/L + {NODES}/{TIERS} x S/L + S/unpack   "
          f"({TIERS} foremen, each fed once)")
    print(f"  url, serve     {NODES} x S/L + o_fetch + S/unpack       (submit host's link shared)")
    print(f"  url+caches     {TIERS} x S/L + {NODES}/{TIERS} x S/L + o_fetch + S/unpack")
    print(f"  shared FS      max({NODES} x S/FS, S/L) + o_fetch + S/unpack")
    print("  (L: the link of the submit host and of each node; FS: the shared filesystem's "
          "aggregate bandwidth; seconds)")
    header = f"{'env':>6} {'link':>9} " + "".join(
        f"{m:>15}" for m in ("manager", "foremen", "url, serve", "url+caches",
                            *(f"shared {k}" for k in SHARED_FS)))
    print(header)
    for size in (0.5 * GB, 5 * GB):
        for name, link in LINKS.items():
            cells = [
                NODES * (size / link + wq_o) + size / unpack,
                TIERS * size / link + NODES / TIERS * size / link + size / unpack,
                NODES * size / link + fetch_o + size / unpack,
                TIERS * size / link + NODES / TIERS * size / link + fetch_o + size / unpack,
                *(max(NODES * size / fs, size / link) + fetch_o + size / unpack
                  for fs in SHARED_FS.values()),
            ]
            print(f"{size / GB:>5.1f}G {name:>9} " + "".join(f"{c:>15.0f}" for c in cells))


# -- (c) dispatch ------------------------------------------------------------------------------
#: bench/dispatch.py at commit 655ab73 (before the dispatch work of issue 21) on this host,
#: 2026-12-06 01:00-01:20 UTC, median of 3 runs (2000x3, 1500x2, 1500x2 tasks; other sessions'
#: tests loading the 2 cores as usual): CPU ms per task, and tasks/s.
BEFORE = {"submitting": 2.04, "manager": 5.41, "worker": 1.08, "tasks/s": 83}


def _bench_module(name: str) -> Any:
    """Another bench script, loaded by path (this directory stays off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(_HERE) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def part_c(tmp: Path, tasks: int, rounds: int) -> None:
    from parsl_poncho import EnvStore

    dispatch, serverless = _bench_module("dispatch"), _bench_module("serverless")
    slots = os.cpu_count() or 1
    after, env_hash = dispatch.measure(tmp / "dispatch", tasks, rounds, slots)
    store = EnvStore(tmp / "dispatch" / "cache")
    env = store.lookup(env_hash or "")
    store.close()
    fn_pkl = tmp / "fn.pkl"
    import cloudpickle

    fn_pkl.write_bytes(cloudpickle.dumps((serverless._noop, (), {})))
    files = [(str(shim_file("poncho_run")), "poncho_run"),
             (str(shim_file("run_function.py")), "run_function.py"),
             (str(env.tarball), env.tarball.name), (str(fn_pkl), "fn.pkl")]
    args = argparse.Namespace(tasks=tasks, slots=slots, warmup=20)
    wq_cpu: list[float] = []
    floor = statistics.median(serverless.run_wq_floor(args, files, tmp, wq_cpu)
                              ["work queue floor"] for _ in range(rounds))
    wq_capped_cpu: list[float] = []
    for _ in range(rounds):
        serverless.run_wq_floor(args, files, tmp, wq_capped_cpu, queued=CAPPED)
    parsl_cpu = statistics.median(_parsl_alone_cpu(tasks, tmp / f"threads{turn}")
                                  for turn in range(rounds))
    serverless._setup()
    htex = statistics.median(_htex_noop(serverless, args, tmp / f"htex{turn}")
                             for turn in range(rounds))
    print(f"\n(c) dispatch: warm serverless no-op tasks on one local worker ({slots} slots), "
          f"{tasks} per round, median of {rounds} rounds")
    print(f"{'CPU ms per task':<36}{'before':>10}{'after':>10}")
    for name in ("submitting", "manager"):
        print(f"{name + ' process':<36}{BEFORE[name]:>10.2f}{after[name]:>10.2f}")
    before_host = BEFORE["submitting"] + BEFORE["manager"]
    host = after["submitting"] + after["manager"]
    print(f"{'submit host (the two above)':<36}{before_host:>10.2f}{host:>10.2f}"
          f"   target <= 0.5 ({host / 0.5:.1f}x it)")
    print(f"{'work_queue_worker process':<36}{BEFORE['worker']:>10.2f}{after['worker']:>10.2f}")
    print(f"{'one submit-host core, tasks/s':<36}{1e3 / before_host:>10.0f}{1e3 / host:>10.0f}")
    # The floors under the target: what Parsl and Work Queue cost per task with no Poncho.
    print("floors, this run (CPU ms per task on the submit host):")
    print(f"  Parsl alone: DataFlowKernel + ThreadPoolExecutor, no-op apps  {parsl_cpu:>6.2f}")
    for label, values in ((f"at most {CAPPED} queued", wq_capped_cpu),
                          ("all queued at once", wq_cpu)):
        print(f"  Work Queue alone, {label + ':':<21} manager + Python loop "
              f"{statistics.median(values) if values else float('nan'):>6.2f}")
    print("('before': recorded at commit 655ab73 on this host; 'after': measured now)")
    rate = after["tasks/s"]
    print(f"tasks/s, this run: serverless no-op {rate:.0f} (before, recorded: "
          f"{BEFORE['tasks/s']:.0f}); Work Queue floor {floor:.0f}; HTEX no-op {htex:.0f}")
    print(f"serverless / floor = {rate / floor:.2f} (target >= 0.5); "
          f"serverless / HTEX = {rate / htex:.2f}")


#: Tasks in Work Queue at once for the capped floor: the backlog's minimum cap.
CAPPED = 32


def _parsl_alone_cpu(tasks: int, run_dir: Path) -> float:
    """CPU ms per task of Parsl's DataFlowKernel with its cheapest executor (threads in this
    process) running no-op apps: the submitting process's share that Poncho cannot remove."""
    import parsl
    from parsl.config import Config
    from parsl.executors.threads import ThreadPoolExecutor

    app = parsl.python_app(_noop_app, executors=["threads"])
    config = Config(executors=[ThreadPoolExecutor(label="threads", max_threads=2)],
                    run_dir=str(run_dir), strategy="none")
    with parsl.load(config):
        for future in [app() for _ in range(50)]:
            future.result()
        cpu0 = time.process_time()
        for future in [app() for _ in range(tasks)]:
            future.result()
        return (time.process_time() - cpu0) / tasks * 1e3


def _noop_app() -> None:
    return None


def _htex_noop(serverless: Any, args: argparse.Namespace, run_dir: Path) -> float:
    from parsl.executors import HighThroughputExecutor

    executor = HighThroughputExecutor(label="htex", max_workers_per_node=args.slots,
                                      provider=serverless._provider())
    cases = [("htex no-op", "no-op", {}, args.tasks)]
    return serverless._run_dfk(executor, run_dir, cases, args.warmup)["htex no-op"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path)
    parser.add_argument("--rate", type=float, default=20.0, help="origin cap, MB/s")
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--parts", default="a,b,c", help="which of a, b (needs a), c to run")
    parser.add_argument("--tasks", type=int, default=1000, help="(c): tasks per round")
    parser.add_argument("--rounds", type=int, default=3, help="(c): rounds")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    counts = [int(n) for n in args.workers.split(",")]
    rate = args.rate * 1e6
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if parts & {"a", "b"}:
            tarball = args.tarball or default_tarball()
            rows = part_a(tarball, counts, rate, Path(tmp))
            if "b" in parts:
                unpack = unpack_rate(tarball, Path(tmp))
                fetch_o = fetch_overhead(Path(tmp))
                part_b(tarball.stat().st_size, rows, counts, rate, unpack, fetch_o)
        if "c" in parts:
            part_c(Path(tmp), args.tasks, args.rounds)


if __name__ == "__main__":
    main()
