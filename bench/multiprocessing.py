"""Benchmark pools: the standard library's Pool(2), Ray's Pool and ours, beside Parsl apps.

Prints, from one run on this machine (one local worker offering its cores), medians of:
  * ``Pool.map`` of --items no-op items with the default chunksize, in items/s;
  * --round-trips serial ``Pool.apply`` round trips of a no-op, in ms;
  * ``GridSearchCV(SVC(), 3x3 grid, cv=3, n_jobs=-1)`` on ``load_digits``, in s: under joblib's
    loky backend (the standard library's row), Ray's joblib backend and ours ("poncho"; also
    with ``max_nbytes="100K"``, which sends X once per node); loky and ours take turns, round
    after round, in the same phase;
  * shared state, driver side: ``Queue.put``+``get`` pairs/s and ``Manager().dict()``
    set+get pairs/s, --pairs per round (ours: one network round trip each to the run's
    redis-server; the stdlib's: a pipe and feeder thread, and its manager process);
for ``multiprocessing.get_context("fork").Pool(2)``, ``ray.util.multiprocessing.Pool()`` (a
local Ray with this host's cores) and ``parsl_poncho.multiprocessing.Pool()`` (the embedded
default executor: one local worker with this host's cores; serverless). Beside them, a
serverless Parsl app's serial round trip (PonchoExecutor ``function_exec_mode="serverless"``)
and Parsl HTEX's no-op tasks/s (bench/serverless.py's helpers). Then the ratios the issue sets
targets for. Everything is warm: envs built, servers started, one untimed run of each case.

Processes (issue 20), in the same run, the standard library's ``fork`` context beside ours
(the embedded executor; serverless process tasks):
  * a ``Pipe`` round trip (``send`` + ``recv`` of a small tuple) between the driver and a
    remote ``Process`` echoing it, median of --pipe-trips (default 1,000), in ms;
  * the SubprocVecEnv-like program of tests/e2e/mp_process/vecenv.py (4 Processes stepping
    gymnasium's CartPole over Pipes, --vecenv-steps steps), its seconds to start the 4
    processes, to step, and in all (median of --rounds runs, after one untimed run), each a
    fresh Python; ours is the same file with only its import line changed;
  * the POET-like program of tests/e2e/mp_process/poet.py (a Manager, a Pool whose
    initializer builds a noise table, 3 iterations of 200 apply_async), its seconds, the same
    way.
``--section processes`` runs only these (``pools`` only the rest).

Ray is not in the test lock; it runs in a child process from its own virtual environment that
layers on .venv (so it sees the same scikit-learn), made once with:

    python -m venv .bench/ray-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > .bench/ray-venv/lib/python3.11/site-packages/poncho-venv.pth
    .bench/ray-venv/bin/pip install -c constraints.txt ray

(--ray-python names another interpreter; without one, Ray's row says "not installed").

Usage: python bench/multiprocessing.py [--items 10000] [--round-trips 200] [--rounds 3]
                                       [--ray-python .bench/ray-venv/bin/python]
                                       [--pairs 2000] [--section all|pools|processes|shared]
                                       [--pipe-trips 1000]
                                       [--vecenv-steps 300]
"""

import os
import sys

# This file is named like the standard library's package: keep its directory off sys.path, or
# every ``import multiprocessing`` (joblib, parsl, concurrent.futures) would import it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

GRID = {"C": [1, 10, 100], "gamma": [0.0001, 0.001, 0.01]}
DEFAULT_RAY_PYTHON = Path(_HERE).parent / ".bench" / "ray-venv" / "bin" / "python"


def noop(x: Any = None) -> None:
    return None


def echo(conn: Any) -> None:
    """A Process's target: send back what it receives, until None."""
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(message)
    conn.close()


def _serverless_bench() -> Any:
    """bench/serverless.py as a module (its helpers: PATH, apps, provider, config, DFK runs)."""
    spec = importlib.util.spec_from_file_location("bench_serverless",
                                                  os.path.join(_HERE, "serverless.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- one pool's measurements ---------------------------------------------------------------------
def measure_pool(pool: Any, args: argparse.Namespace) -> dict[str, float]:
    """items/s of map (median of rounds) and the median apply round trip in seconds."""
    pool.map(noop, range(min(args.items, 2000)))
    for _ in range(10):
        pool.apply(noop, (None,))
    rates = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        pool.map(noop, range(args.items))
        rates.append(args.items / (time.perf_counter() - t0))
    trips = []
    for _ in range(args.round_trips):
        t0 = time.perf_counter()
        pool.apply(noop, (None,))
        trips.append(time.perf_counter() - t0)
    return {"map": statistics.median(rates), "apply": statistics.median(trips)}


#: GridSearchCV cases: name -> (joblib backend, parallel_config options).
SEARCHES = {"loky": ("loky", {}), "ray": ("ray", {}), "poncho": ("poncho", {}),
            "poncho 100K": ("poncho", {"max_nbytes": "100K"})}


def gridsearch_seconds(cases: tuple[str, ...], rounds: int
                       ) -> dict[str, tuple[float, list[float]]]:
    """Per case of :data:`SEARCHES`, the median wall time of the GridSearchCV run and its mean
    test scores. The cases take turns, round after round (order rotating; one untimed round
    first), so machine noise falls on all of them alike."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    times: dict[str, list[float]] = {c: [] for c in cases}
    scores: dict[str, list[float]] = {}
    for r in range(rounds + 1):
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            backend, options = SEARCHES[case]
            t0 = time.perf_counter()
            with joblib.parallel_config(backend=backend, **options):
                search = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)
            if r:
                times[case].append(time.perf_counter() - t0)
            scores[case] = [float(v) for v in search.cv_results_["mean_test_score"]]
    return {c: (statistics.median(times[c]), scores[c]) for c in cases}


def _try(name: str, measure: Callable[[], Any], fallback: Any) -> Any:
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - one failed case must not sink the others
        print(f"  {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return fallback


NAN = {"map": float("nan"), "apply": float("nan")}
NO_SEARCH = {c: (float("nan"), []) for c in ("loky", "poncho", "poncho 100K")}


# -- the rows ------------------------------------------------------------------------------------
def run_stdlib(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        row = _try("stdlib pool", lambda: measure_pool(pool, args), dict(NAN))
    row.update(gridsearch=float("nan"), scores=[])  # loky's: measured beside ours
    return row


def run_poncho(args: argparse.Namespace, cache: Path, stdlib: dict[str, Any]) -> dict[str, Any]:
    """Our row, and loky's GridSearchCV figures into ``stdlib`` (loky and ours take turns).

    The GridSearchCV case gets an embedded executor of its own: all pool chunks share one Work
    Queue category (``run_chunk``), so memory sized on the no-op chunks before would starve
    scikit-learn's fits (MemoryError, which GridSearchCV turns into NaN scores)."""
    import parsl_poncho.joblib
    import parsl_poncho.multiprocessing as pmp
    from parsl_poncho import EnvOptions, WorkerOptions

    options = {"envs": EnvOptions(cache_dir=str(cache)),
               "workers": WorkerOptions(server_idle_timeout=600)}
    pmp.embedded.configure(**options)
    try:
        with pmp.Pool() as pool:
            row = _try("poncho pool", lambda: measure_pool(pool, args), dict(NAN))
    finally:
        pmp.embedded.shutdown()
    pmp.embedded.configure(**options)
    try:
        searches = _try("gridsearch", lambda: gridsearch_seconds(
            ("loky", "poncho", "poncho 100K"), args.rounds), NO_SEARCH)
        row["gridsearch"], row["scores"] = searches["poncho"]
        row["gridsearch 100K"], row["scores 100K"] = searches["poncho 100K"]
        stdlib["gridsearch"], stdlib["scores"] = searches["loky"]
    finally:
        parsl_poncho.joblib.close_pools()
        pmp.embedded.shutdown()
    return row


def run_ray_child(args: argparse.Namespace) -> int:
    """In Ray's interpreter: print Ray's row as JSON."""
    import ray
    from ray.util.joblib import register_ray
    from ray.util.multiprocessing import Pool

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        register_ray()
        with Pool() as pool:
            row = measure_pool(pool, args)
        row["gridsearch"], row["scores"] = gridsearch_seconds(("ray",), args.rounds)["ray"]
    finally:
        ray.shutdown()
    print(json.dumps(row))
    return 0


def run_ray(args: argparse.Namespace) -> dict[str, Any] | None:
    python = Path(args.ray_python)
    if not python.exists():
        print(f"ray: {python} not found (see this file's docstring)", file=sys.stderr)
        return None
    command = [str(python), os.path.abspath(__file__), "--ray-child", "--items", str(args.items),
               "--round-trips", str(args.round_trips), "--rounds", str(args.rounds)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"ray: failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_parsl(args: argparse.Namespace, cache: Path, work: Path) -> dict[str, float]:
    """A serverless app's median serial round trip, and HTEX's no-op tasks/s (median)."""
    import parsl
    from parsl.executors import HighThroughputExecutor

    from parsl_poncho import EnvOptions, PonchoExecutor, WorkerOptions

    sl = _serverless_bench()
    sl._setup()
    app = sl.APPS["no-op"]
    executor = PonchoExecutor(
        provider=sl._provider(),
        function_exec_mode="serverless",
        envs=EnvOptions(cache_dir=str(cache)),
        workers=WorkerOptions(server_idle_timeout=600, options=f"--cores {os.cpu_count()}"),
    )
    trips = []
    with parsl.load(sl._config(executor, work / "run-serverless")):
        for _ in range(20):
            app().result()
        for _ in range(args.round_trips):
            t0 = time.perf_counter()
            app().result()
            trips.append(time.perf_counter() - t0)
    htex = HighThroughputExecutor(label="htex", max_workers_per_node=os.cpu_count(),
                                  provider=sl._provider())
    cases = [(f"htex {r}", "no-op", {}, args.htex_tasks) for r in range(args.rounds)]
    rates = sl._run_dfk(htex, work / "run-htex", cases, 20)
    return {"serverless app": statistics.median(trips),
            "htex no-op": statistics.median(rates.values()), "versions": sl._versions()}


# -- processes (issue 20) -------------------------------------------------------------------------
VECENV = Path(_HERE).parent / "tests" / "e2e" / "mp_process" / "vecenv.py"
POET = VECENV.parent / "poet.py"
RUN_EMBEDDED = VECENV.parent / "run_embedded.py"


def pipe_round_trip(mp: Any, trips: int) -> float:
    """Median seconds of a send + recv between here and a Process of ``mp`` that echoes."""
    here, there = mp.Pipe()
    process = mp.Process(target=echo, args=(there,), daemon=True)
    process.start()
    there.close()
    for _ in range(50):  # warm: the connection made, the pickler's caches
        here.send(("step", 1))
        here.recv()
    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        here.send(("step", 1))
        here.recv()
        times.append(time.perf_counter() - t0)
    here.send(None)
    process.join()
    here.close()
    return statistics.median(times)


def program_seconds(source: Path, ours: bool, cache: Path, work: Path, args: argparse.Namespace
                    ) -> dict[str, float]:
    """The medians of a program's own timings (its "seconds"), each run a fresh Python."""
    program = source
    command = [sys.executable, str(program)]
    if ours:
        program = work / f"ours_{source.name}"
        program.write_text(source.read_text().replace(
            "import multiprocessing as mp", "import parsl_poncho.multiprocessing as mp"))
        command = [sys.executable, str(RUN_EMBEDDED), str(program)]
    env = {**os.environ, "PONCHO_CACHE": str(cache), "WORKER": "work_queue_worker",
           "STEPS": str(args.vecenv_steps)}
    runs = []
    for r in range(args.rounds + 1):
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        if r:
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            runs.append(seconds if isinstance(seconds, dict) else {"total": seconds})
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def run_processes(args: argparse.Namespace, cache: Path, work: Path) -> dict[str, Any]:
    import multiprocessing

    import parsl_poncho.multiprocessing as pmp
    from parsl_poncho import EnvOptions, WorkerOptions

    out: dict[str, Any] = {}
    out["pipe stdlib"] = _try("stdlib pipe", lambda: pipe_round_trip(
        multiprocessing.get_context("fork"), args.pipe_trips), float("nan"))
    pmp.embedded.configure(envs=EnvOptions(cache_dir=str(cache)),
                           workers=WorkerOptions(server_idle_timeout=600))
    try:
        out["pipe ours"] = _try("poncho pipe", lambda: pipe_round_trip(pmp, args.pipe_trips),
                                float("nan"))
    finally:
        pmp.embedded.shutdown()
    nan = {"start": float("nan"), "steps": float("nan"), "total": float("nan")}
    for name, source in (("vecenv", VECENV), ("poet", POET)):
        for who, ours in (("stdlib", False), ("ours", True)):
            out[f"{name} {who}"] = _try(f"{who} {name}", lambda s=source, o=ours: program_seconds(
                s, o, cache, work, args), nan)
    return out


def print_processes(row: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nprocesses: Pipe round trip driver <-> remote Process (median of "
          f"{args.pipe_trips}), target < 2 ms")
    for who in ("stdlib", "ours"):
        ms = row[f"pipe {who}"] * 1e3
        verdict = "" if who == "stdlib" else ("  met" if ms < 2 else "  NOT met")
        print(f"  {who:<8} {ms:>8.3f} ms{verdict}")
    print(f"SubprocVecEnv-like: 4 Processes x {args.vecenv_steps} CartPole steps, seconds "
          f"(median of {args.rounds} fresh runs)")
    print(f"  {'':<8} {'start':>8} {'steps':>8} {'total':>8}")
    for who in ("stdlib", "ours"):
        s = row[f"vecenv {who}"]
        print(f"  {who:<8} {s['start']:>8.2f} {s['steps']:>8.2f} {s['total']:>8.2f}")
    print(f"POET-like: a Manager, Pool(2), 3 iterations x 200 apply_async, seconds (median of "
          f"{args.rounds} fresh runs)")
    for who in ("stdlib", "ours"):
        print(f"  {who:<8} {row[f'poet {who}']['total']:>8.2f}")


# -- report --------------------------------------------------------------------------------------
def shared_state_rates(module: Any, pairs: int, rounds: int) -> dict[str, float]:
    """Median pairs/s of ``Queue.put``+``get`` and ``Manager().dict()`` set+get."""
    queue = module.Queue()
    rates: dict[str, list[float]] = {"queue": [], "dict": []}
    with module.Manager() as manager:
        shared = manager.dict()
        for _ in range(rounds + 1):  # the first round is a warm-up
            started = time.perf_counter()
            for i in range(pairs):
                queue.put(i)
                queue.get()
            rates["queue"].append(pairs / (time.perf_counter() - started))
            started = time.perf_counter()
            for i in range(pairs):
                shared[i % 100] = i
                shared[i % 100]  # noqa: B018 - the get being measured
            rates["dict"].append(pairs / (time.perf_counter() - started))
    return {k: statistics.median(v[1:]) for k, v in rates.items()}


def print_shared_state(args: argparse.Namespace) -> None:
    import multiprocessing

    import parsl_poncho.multiprocessing as ours

    stdlib = shared_state_rates(multiprocessing.get_context("fork"), args.pairs, args.rounds)
    poncho = shared_state_rates(ours, args.pairs, args.rounds)
    print(f"\nshared state, driver side: medians of {args.rounds} rounds of {args.pairs} pairs"
          "\n(ours: a network round trip per call to the run's redis-server on this host)")
    print(f"{'pairs/s':<34} {'stdlib':>10} {'poncho':>10} {'poncho/stdlib':>14}")
    for name, key in (("Queue.put + get", "queue"), ("Manager().dict() set + get", "dict")):
        print(f"{name:<34} {stdlib[key]:>10,.0f} {poncho[key]:>10,.0f} "
              f"{_ratio(poncho[key], stdlib[key]):>14.2f}")


def _ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def print_report(rows: dict[str, dict[str, Any] | None], parsl_row: dict[str, Any],
                 args: argparse.Namespace, load: tuple[float, float]) -> None:
    print(f"\nmultiprocessing bench, {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{platform.node()}: {os.cpu_count()} cores, one local worker; warm envs")
    print(f"{parsl_row.get('versions', '')}; medians of {args.rounds} rounds "
          f"(map, GridSearchCV) and of {args.round_trips} round trips; load average (1 min) "
          f"{load[0]:.2f} at start, {load[1]:.2f} at end")
    lokys = (rows["stdlib Pool(2) / loky"] or {}).get("scores")
    print(f"\n{'pool / joblib backend':<34} {'map items/s':>12} {'apply ms':>9} "
          f"{'GridSearchCV s':>15}  scores = loky's")
    for name, row in rows.items():
        if row is None:
            print(f"{name:<34} {'not installed / failed':>38}")
            continue
        same = "yes" if row.get("scores") and row["scores"] == lokys else "NO"
        print(f"{name:<34} {row['map']:>12,.0f} {row['apply'] * 1e3:>9.2f} "
              f"{row['gridsearch']:>15.2f}  {same}")
    ours = rows["parsl_poncho Pool() / poncho"] or {}
    if "gridsearch 100K" in ours:
        same = "yes" if ours["scores 100K"] == lokys else "NO"
        print(f"{'  the same, max_nbytes=100K':<34} {'':>12} {'':>9} "
              f"{ours['gridsearch 100K']:>15.2f}  {same}   (X, 0.9 MB, sent once per node)")
    print(f"{'Parsl serverless app (Poncho)':<34} {'':>12} "
          f"{parsl_row['serverless app'] * 1e3:>9.2f}")
    print(f"{'Parsl HTEX no-op, tasks/s':<34} {parsl_row['htex no-op']:>12,.0f}")
    ray = rows.get("ray Pool() / ray") or {}
    loky = rows["stdlib Pool(2) / loky"] or {}
    nan = float("nan")
    checks = [
        ("ours map / Ray map", _ratio(ours.get("map", nan), ray.get("map", nan)), ">=", 1.0),
        ("ours map / HTEX no-op tasks/s", _ratio(ours.get("map", nan), parsl_row["htex no-op"]),
         ">=", 1.0),
        ("ours apply / serverless app round trip",
         _ratio(ours.get("apply", nan), parsl_row["serverless app"]), "<=", 1.5),
        ("ours GridSearchCV / loky's", _ratio(ours.get("gridsearch", nan),
                                              loky.get("gridsearch", nan)), "<=", 1.5),
        ("ours map / stdlib map", _ratio(ours.get("map", nan), loky.get("map", nan)), None, None),
        ("ours apply / stdlib apply", _ratio(ours.get("apply", nan), loky.get("apply", nan)),
         None, None),
        ("ours GridSearchCV, max_nbytes=100K / loky's",
         _ratio(ours.get("gridsearch 100K", nan), loky.get("gridsearch", nan)), None, None),
        ("ours GridSearchCV / Ray's", _ratio(ours.get("gridsearch", nan),
                                             ray.get("gridsearch", nan)), None, None),
    ]
    print(f"\n{'ratio':<42} {'value':>8} {'target':>8}")
    for name, value, op, target in checks:
        goal = "" if op is None else f"{op} {target:g}"
        verdict = ""
        if op is not None and value == value:
            verdict = "  met" if (value >= target if op == ">=" else value <= target) else \
                "  NOT met"
        print(f"{name:<42} {value:>8.3g} {goal:>8}{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--htex-tasks", type=int, default=1000)
    parser.add_argument("--ray-python", default=str(DEFAULT_RAY_PYTHON))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="env store (default: PARSL_PONCHO_CACHE or ~/.cache/parsl-poncho)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--section", choices=("all", "pools", "processes", "shared"),
                        default="all", help="shared: only the queue and manager-dict rows")
    parser.add_argument("--pipe-trips", type=int, default=1000)
    parser.add_argument("--vecenv-steps", type=int, default=300)
    parser.add_argument("--ray-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ray_child:
        return run_ray_child(args)
    if args.section == "shared":
        print_shared_state(args)
        return 0
    from parsl_poncho.paths import default_cache_dir

    cache = (args.cache_dir or default_cache_dir()).absolute()
    work = Path(tempfile.mkdtemp(prefix="bench-mp-"))
    os.environ.setdefault("PARSL_PONCHO_WORKER_CACHE", str(work / "worker-cache"))
    load_start = os.getloadavg()[0]
    rows: dict[str, dict[str, Any] | None] = {}
    if args.section in ("all", "processes"):
        try:
            processes = run_processes(args, cache, work)
        finally:
            if args.section == "processes":
                shutil.rmtree(work, ignore_errors=True)
        print_processes(processes, args)
        if args.section == "processes":
            return 0
    try:
        rows["stdlib Pool(2) / loky"] = run_stdlib(args)
        print("stdlib done", file=sys.stderr)
        rows["parsl_poncho Pool() / poncho"] = run_poncho(args, cache,
                                                          rows["stdlib Pool(2) / loky"])
        print("poncho done", file=sys.stderr)
        rows["ray Pool() / ray"] = run_ray(args)
        print("ray done", file=sys.stderr)
        parsl_row = run_parsl(args, cache, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(rows, parsl_row, args, (load_start, os.getloadavg()[0]))
    if args.section == "all":
        print_shared_state(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
