"""The same Pool scenarios against the standard library's multiprocessing and against
parsl_poncho.multiprocessing (its embedded executor: local Work Queue workers, real envs),
compared: orders, chunks (= Work Queue tasks), timeouts, exception types, callbacks, the
initializer's runs, terminate, and the stdlib's edge cases (closed pools, results not ready).

This module travels by value (as a script's ``__main__`` would), so the envs need no tests/.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

import parsl_poncho.multiprocessing as poncho_mp
from parsl_poncho import EnvOptions, WorkerOptions

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STD = multiprocessing.get_context("fork")
COUNTER: list = []


# -- the functions the pools run (builtins and os/time only: one small env for all) -----------
def square(x):
    return x * x


def add(a, b):
    return a + b


def where(x):
    return x, os.getpid()


def nap_then(x):
    time.sleep(x)
    return x


def fail_on(x):
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def count_init(path, tag):
    COUNTER.append(tag)  # a global the calls read, set once per process that ran it
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def read_counter(_x):
    return list(COUNTER)


def mark_then_nap(args):
    directory, i = args
    with open(os.path.join(directory, f"started-{i}"), "w"):
        pass
    time.sleep(1.5)
    return i


def yaml_at_run_time(x):
    import importlib

    name = "".join(["ya", "ml"])  # a name the analysis cannot see
    return importlib.import_module(name).safe_load(f"[{x}]")


def items_then_raise():
    yield 1
    yield 2
    raise KeyError("the input ran dry")


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(request):
    """The embedded executor, with envs in a cache kept between runs (one small env)."""
    cache = request.config.cache.mkdir("parsl-poncho-mp-envs")
    poncho_mp.embedded.shutdown()
    poncho_mp.embedded.configure(envs=EnvOptions(cache_dir=str(cache)),
                                 workers=WorkerOptions(server_idle_timeout=60))
    yield poncho_mp.embedded.default_executor()
    poncho_mp.embedded.shutdown()


@pytest.fixture(params=["stdlib", "poncho"])
def mp(request):
    """The module under test: the standard library's (fork context) or ours."""
    if request.param == "stdlib":
        return STD
    request.getfixturevalue("embedded")
    return poncho_mp


def count_tasks(mp, monkeypatch) -> list:
    """A list that gets one entry per Work Queue task the pools submit (stays empty for the
    stdlib): the embedded executor's submit, counted."""
    sent: list = []
    if mp is poncho_mp:
        executor = poncho_mp.embedded.default_executor()
        submit = executor.submit

        def counting(*args, **kwargs):
            sent.append(args[0])
            return submit(*args, **kwargs)

        monkeypatch.setattr(executor, "submit", counting)
    return sent


# -- orders -----------------------------------------------------------------------------------
def test_map_starmap_and_imap_keep_the_input_order(mp):
    with mp.Pool(2) as pool:
        assert pool.map(square, range(20), chunksize=3) == [x * x for x in range(20)]
        assert pool.starmap(add, [(i, 10) for i in range(9)], chunksize=2) == list(
            range(10, 19))
        assert list(pool.imap(square, iter(range(7)), chunksize=2)) == [x * x for x in range(7)]
        assert list(pool.imap(square, iter(range(5)))) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(10), chunksize=3)) == sorted(
            x * x for x in range(10))
        assert pool.map(square, []) == []
        assert pool.apply(add, (2,), {"b": 5}) == 7


def test_imap_unordered_yields_in_completion_order(mp):
    with mp.Pool(2) as pool:
        # 4 s: room for the second call's server start (or regular-mode fallback) on a loaded CI
        assert list(pool.imap_unordered(nap_then, [4.0, 0.0])) == [0.0, 4.0]
        assert list(pool.imap(nap_then, [1.0, 0.0])) == [1.0, 0.0]


# -- chunks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, chunksize", [(25, None), (25, 4), (3, None)])
def test_chunks_follow_the_stdlib_default_and_each_is_one_task_in_one_fork(mp, n, chunksize,
                                                                            monkeypatch):
    sent = count_tasks(mp, monkeypatch)
    with mp.Pool(2) as pool:
        result = pool.map_async(where, range(n), chunksize)
        values = result.get(timeout=120)
        size = result._chunksize
        assert size == (chunksize or -(-n // 8))  # divmod(n, processes * 4), rounded up
        assert [v for v, _pid in values] == list(range(n))
        if mp is poncho_mp:
            chunks = [values[i:i + size] for i in range(0, n, size)]
            assert len(sent) == len(chunks)
            for chunk in chunks:  # a chunk's calls share one process, chunks do not
                assert len({pid for _v, pid in chunk}) == 1
            assert len({chunk[0][1] for chunk in chunks}) == len(chunks)


# -- timeouts ---------------------------------------------------------------------------------
def test_get_and_next_time_out_with_multiprocessing_timeouterror(mp):
    with mp.Pool(2) as pool:
        slow = pool.apply_async(nap_then, (3,))
        with pytest.raises(multiprocessing.TimeoutError, match=r"^$"):
            slow.get(timeout=0.2)
        assert not slow.ready()
        with pytest.raises(ValueError, match=r"not ready"):
            slow.successful()
        it = pool.imap(nap_then, [3])
        with pytest.raises(multiprocessing.TimeoutError, match=r"^$"):
            it.next(timeout=0.2)
        assert slow.get(timeout=120) == 3 and slow.successful()
        assert it.next(timeout=120) == 3
    assert mp.TimeoutError is multiprocessing.TimeoutError


# -- exceptions and callbacks ------------------------------------------------------------------
def test_exceptions_keep_their_type_and_reach_error_callbacks_in_a_result_thread(mp):
    seen: dict = {}
    done = threading.Event()

    def on_error(exc):
        seen["error"] = (exc, threading.current_thread() is threading.main_thread())
        done.set()

    def on_value(value):
        seen["value"] = (value, threading.current_thread() is threading.main_thread())

    with mp.Pool(2) as pool:
        bad = pool.apply_async(fail_on, (3,), callback=on_value, error_callback=on_error)
        with pytest.raises(ValueError, match=r"item 3 is bad"):
            bad.get(timeout=120)
        assert done.wait(10) and not bad.successful()
        exc, in_main = seen["error"]
        assert type(exc) is ValueError and not in_main
        pool.apply_async(square, (4,), callback=on_value).get(timeout=120)
        time.sleep(0.2)  # the callback runs before get() returns in both; be lenient
        assert seen["value"] == (16, False)
        with pytest.raises(ValueError, match=r"item 3 is bad"):
            pool.map(fail_on, range(8), chunksize=2)
        mapped: list = []
        result = pool.map_async(fail_on, range(8), 2, callback=mapped.append,
                                error_callback=mapped.append)
        result.wait(120)
        assert len(mapped) == 1 and type(mapped[0]) is ValueError and not result.successful()
        with pytest.raises(ValueError, match=r"item 3 is bad"):
            list(pool.imap(fail_on, range(5)))
        it = pool.imap(square, items_then_raise())
        assert [it.next(timeout=120), it.next(timeout=120)] == [1, 4]
        with pytest.raises(KeyError, match=r"the input ran dry"):
            it.next(timeout=120)
    if mp is poncho_mp:
        assert "fail_on" in getattr(exc, "remote_traceback", "")


# -- the initializer ----------------------------------------------------------------------------
def test_the_initializer_runs_once_per_process_in_the_stdlib_and_once_per_node_here(mp,
                                                                                   tmp_path):
    log = tmp_path / "init.log"
    with mp.Pool(2, initializer=count_init, initargs=(str(log), "ready")) as pool:
        results = [pool.apply_async(read_counter, (i,)) for i in range(12)]
        assert all(r.get(timeout=120) == ["ready"] for r in results)
        assert pool.map(read_counter, range(6), chunksize=1) == [["ready"]] * 6
    runs = log.read_text().splitlines()
    if mp is STD:
        assert len(runs) == 2  # one per worker process
    else:
        assert len(runs) == 1  # one node: one function server for this pool


def test_maxtasksperchild_runs_the_initializer_again(mp, tmp_path):
    log = tmp_path / "init.log"
    with mp.Pool(1, initializer=count_init, initargs=(str(log), "x"),
                 maxtasksperchild=2) as pool:
        for i in range(6):
            assert pool.apply(read_counter, (i,)) == ["x"]
    runs = len(log.read_text().splitlines())
    if mp is STD:  # each worker ends after 2 tasks; the one replacing the third may start
        assert runs in (3, 4), runs
    else:  # a server per 2 chunks; none is started before a chunk needs it
        assert runs == 3


# -- terminate, close, join -----------------------------------------------------------------------
def test_terminate_drops_what_has_not_started(mp, tmp_path):
    pool = mp.Pool(2)
    result = pool.map_async(mark_then_nap, [(str(tmp_path), i) for i in range(20)], chunksize=1)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("started-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.terminate()
    pool.join()
    time.sleep(2)  # what was sent had time to start
    started = len(list(tmp_path.glob("started-*")))
    assert 1 <= started <= 2, started
    assert not result.ready()
    with pytest.raises(ValueError, match=r"Pool not running"):
        pool.apply_async(square, (1,))


def test_close_then_join_waits_for_the_work_given(mp):
    pool = mp.Pool(2)
    results = [pool.apply_async(nap_then, (0.2,)) for _ in range(4)]
    with pytest.raises(ValueError, match=r"Pool is still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match=r"Pool not running"):
        pool.map(square, [1])
    pool.join()
    assert all(r.ready() and r.get() == 0.2 for r in results)


def test_bad_arguments_fail_as_in_the_stdlib(mp):
    with pytest.raises(ValueError, match=r"Number of processes must be at least 1"):
        mp.Pool(0)
    with pytest.raises(ValueError, match=r"maxtasksperchild must be a positive int or None"):
        mp.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match=r"initializer must be a callable"):
        mp.Pool(1, initializer=3)
    with mp.Pool(1) as pool:
        with pytest.raises(ValueError, match=r"Chunksize must be 1\+, not 0"):
            pool.imap(square, [1], chunksize=0)
        with pytest.raises(NotImplementedError, match=r"pool objects cannot be passed"):
            pickle.dumps(pool)


def test_context_functions(mp):
    assert mp.get_context("spawn").Pool is not None
    with pytest.raises(ValueError, match=r"cannot find context for 'bogus'"):
        mp.get_context("bogus")
    if mp is poncho_mp:
        assert mp.cpu_count() == os.cpu_count()  # the embedded workers offer this host's cores
        assert mp.get_context().cpu_count() == os.cpu_count()


def test_worker_files_are_cleaned_after_a_closed_pool(embedded):
    with poncho_mp.Pool(1, initializer=square, initargs=(1,)) as pool:
        local = Path(pool._link._dir)
        assert pool.apply(square, (3,)) == 9
        assert any(local.iterdir())  # the initializer's file
    assert not local.exists()


def test_what_a_pool_function_misses_at_run_time_is_learnt_for_that_function(embedded,
                                                                            request):
    from parsl_poncho.learning import list_learnt

    learnt = Path(request.config.cache.mkdir("parsl-poncho-mp-envs")) / "learnt"
    for record in learnt.glob("*yaml_at_run_time*.json"):
        record.unlink()  # learnt by an earlier run: learn it again
    with poncho_mp.Pool(1) as pool:
        assert pool.apply(yaml_at_run_time, (5,)) == [5]
        assert pool.apply(square, (3,)) == 9
    records = {r["app"]: r for r in list_learnt(learnt.parent)}
    (app,) = [name for name in records if "yaml_at_run_time" in name]
    assert "yaml" in str(records[app]), records[app]
    assert not [name for name in records if "square" in name]  # per function, not per pool


def test_imap_reads_its_input_as_slots_free_up(embedded):
    taken: list = []

    def numbers():
        for i in range(50):
            taken.append(i)
            yield 0.0 if i == 0 else 3.0

    with poncho_mp.Pool(2) as pool:
        it = pool.imap(nap_then, numbers())
        assert it.next(timeout=120) == 0.0
        # two sent, the first done, a third sent, a fourth read and waiting (the stdlib reads
        # all 50 at once)
        assert len(taken) <= 4, taken


# -- Process and Pipe ------------------------------------------------------------------------
def echo_then_close(conn):
    conn.send(conn.recv() + "!")
    conn.send_bytes(b"raw")
    conn.close()


def exit_with(how):
    if how == "raise":
        raise RuntimeError("the target raised")
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit3":
        sys.exit(3)
    if how == "exit-message":
        sys.exit("a message, not a code")


def nap(seconds):
    time.sleep(seconds)


def who_am_i(conn):
    me, parent = multiprocessing.current_process(), multiprocessing.parent_process()
    conn.send((me.name, me.daemon, parent.pid if parent else None, os.getppid()))
    conn.close()


def send_later(conn, delay):
    time.sleep(delay)
    conn.send("late")
    conn.close()


def test_pipe_ends_talk_and_recv_raises_eoferror_after_the_other_end_closes(mp):
    here, there = mp.Pipe()
    process = mp.Process(target=echo_then_close, args=(there,))
    process.start()
    there.close()  # the driver's copy: closing it does nothing to the Process's copy
    assert not here.poll(0.3)
    here.send("ping")
    assert here.recv() == "ping!"
    assert here.recv_bytes() == b"raw"
    with pytest.raises(EOFError):
        here.recv()
    assert here.poll(0)  # EOF is something to read
    process.join(120)
    assert process.exitcode == 0
    here.close()
    with pytest.raises(OSError, match=r"handle is closed"):
        here.recv()


def test_pipe_in_one_process_and_a_simplex_pipe(mp):
    a, b = mp.Pipe()
    a.send({"x": 1})
    assert b.recv() == {"x": 1}
    b.close()
    with pytest.raises(EOFError):
        a.recv()
    reader, writer = mp.Pipe(duplex=False)
    with pytest.raises(OSError, match=r"connection is read-only"):
        reader.send(1)
    with pytest.raises(OSError, match=r"connection is write-only"):
        writer.recv()
    process = mp.Process(target=send_later, args=(writer, 1.0))
    process.start()
    writer.close()
    assert not reader.poll(0.2)
    assert reader.poll(120) and reader.recv() == "late"
    process.join(120)


@pytest.mark.parametrize("how, code", [("return", 0), ("raise", 1), ("sigkill", -9),
                                       ("exit3", 3), ("exit-message", 1)])
def test_exitcode_as_in_the_stdlib(mp, how, code):
    process = mp.Process(target=exit_with, args=(how,))
    assert process.exitcode is None and not process.is_alive()
    process.start()
    process.join(120)
    assert process.exitcode == code
    assert not process.is_alive()
    assert process not in mp.active_children()


def test_join_timeout_is_alive_and_terminate(mp):
    process = mp.Process(target=nap, args=(60,), name="napper", daemon=True)
    with pytest.raises(AssertionError, match=r"can only join a started process"):
        process.join()
    process.start()
    with pytest.raises(AssertionError, match=r"cannot start a process twice"):
        process.start()
    started = time.monotonic()
    process.join(timeout=1.0)
    assert 0.9 <= time.monotonic() - started < 10
    assert process.is_alive() and process.exitcode is None
    assert process in mp.active_children()
    with pytest.raises(ValueError, match=r"Cannot close a process while it is still running"):
        process.close()
    process.terminate()
    process.join(120)
    assert process.exitcode == -signal.SIGTERM and not process.is_alive()
    process.close()
    with pytest.raises(ValueError, match=r"process object is closed"):
        process.is_alive()


def test_kill_and_the_target_sees_its_own_name_and_the_driver_as_parent(mp):
    process = mp.Process(target=nap, args=(60,))
    process.start()
    time.sleep(0.5)
    process.kill()
    process.join(120)
    assert process.exitcode == -signal.SIGKILL
    here, there = mp.Pipe()
    process = mp.Process(target=who_am_i, args=(there,), name="asker", daemon=True)
    process.start()
    there.close()
    name, daemon, parent_pid, _ppid = here.recv()
    process.join(120)
    assert (name, daemon, parent_pid) == ("asker", True, os.getpid())


def test_a_process_whose_task_dies_reports_a_nonzero_exitcode(embedded):
    process = poncho_mp.Process(target=nap, args=(60,))
    process.start()
    deadline = time.monotonic() + 120
    while process.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # the task's process on the node (the target's parent), killed as when a node goes
    runner = int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(runner, signal.SIGKILL)
    process.join(30)
    assert process.exitcode == -signal.SIGKILL


# -- Value and Array made here, used in a Process (ours: in the real redis-server store) --------
def fill(array, counter, factor):
    for i in range(len(array)):
        array[i] = i * factor
    counter.value = counter.value + factor


def test_raw_value_and_array_made_here_are_shared_with_a_process(mp):
    array, counter = mp.RawArray("d", 5), mp.RawValue("i", 1)
    process = mp.Process(target=fill, args=(array, counter, 3))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    assert array[:] == [0.0, 3.0, 6.0, 9.0, 12.0] and counter.value == 4
    if mp is poncho_mp:
        import numpy as np

        assert np.ctypeslib.as_array(array.get_obj()).tolist() == array[:]
        store = poncho_mp.get_store()
        assert store.client().strlen(array._key) == 5 * 8  # one blob, the doubles' bytes


def take_all(conn, other, out, producer_dies):
    other.close()
    seen = [conn.recv() for _ in range(3)]
    seen.append(conn.recv_bytes())
    try:
        conn.recv()
        seen.append("no EOF")
    except EOFError:
        seen.append("EOF")
    out.send((seen, producer_dies))
    out.close()


def send_three_then(conn, other, how):
    other.close()
    for i in range(3):
        conn.send(i)
    conn.send_bytes(b"last")
    if how == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    conn.close()


@pytest.mark.parametrize("how", ["close", "die"])
def test_a_pipe_between_two_processes_and_eof_when_the_sender_closes_or_dies(mp, how):
    a, b = mp.Pipe()
    result, out = mp.Pipe(duplex=False)
    sender = mp.Process(target=send_three_then, args=(a, b, how))
    receiver = mp.Process(target=take_all, args=(b, a, out, how))
    sender.start()
    receiver.start()
    a.close()
    b.close()
    out.close()
    assert result.recv() == ([0, 1, 2, b"last", "EOF"], how)
    for process in (sender, receiver):
        process.join(120)
    assert receiver.exitcode == 0
    assert sender.exitcode == (0 if how == "close" else -signal.SIGKILL)


# -- shared state (issue 20): ours on a real redis-server, side by side with the stdlib -------
# The "other processes" are forks of this driver (the stdlib's fork context) for both.
@pytest.fixture(params=["stdlib", "poncho"])
def shared(request):
    """The module whose primitives are under test: the stdlib's, or ours on a real
    redis-server started by the store."""
    if request.param == "stdlib":
        return STD
    from tools import require_tool

    require_tool("redis-server")
    return poncho_mp


def in_other_process(target, *args):
    """Run ``target(*args)`` in a forked process; the process, started."""
    proc = STD.Process(target=target, args=args)
    proc.start()
    return proc


def hold_lock(lock, held, release_it):
    with lock:
        held.set()
        release_it.wait(30)


def test_queue_full_and_empty_with_timeouts(shared):
    q = shared.Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put("a")
    q.put(["b"], timeout=1)
    started = time.monotonic()
    with pytest.raises(__import__("queue").Full):
        q.put("c", timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    with pytest.raises(__import__("queue").Full):
        q.put_nowait("c")
    assert q.full() and q.qsize() == 2
    assert q.get() == "a" and q.get(timeout=1) == ["b"]
    started = time.monotonic()
    with pytest.raises(__import__("queue").Empty):
        q.get(timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    with pytest.raises(__import__("queue").Empty):
        q.get(block=False)
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(1)


def put_later(q, item, delay):
    time.sleep(delay)
    q.put(item)


def test_a_get_blocked_in_one_process_wakes_when_another_puts(shared):
    q = shared.Queue()
    proc = in_other_process(put_later, q, {"x": 1}, 0.3)
    assert q.get(timeout=20) == {"x": 1}
    proc.join(10)
    assert proc.exitcode == 0


def test_a_lock_held_by_another_process_times_out_here(shared):
    lock, held, release_it = shared.Lock(), shared.Event(), shared.Event()
    proc = in_other_process(hold_lock, lock, held, release_it)
    assert held.wait(20)
    started = time.monotonic()
    assert lock.acquire(timeout=0.3) is False
    assert 0.25 < time.monotonic() - started < 3
    assert lock.acquire(False) is False
    release_it.set()
    assert lock.acquire(timeout=20) is True
    lock.release()
    proc.join(10)
    with pytest.raises(ValueError, match="released too many times"):
        lock.release()


def test_rlock_counts_re_entries_and_only_its_owner_releases(shared):
    rlock = shared.RLock()
    assert rlock.acquire() and rlock.acquire(timeout=1) and rlock.acquire(False)
    errors = []

    def other_thread():
        errors.append(rlock.acquire(timeout=0.2))
        try:
            rlock.release()
        except AssertionError:
            errors.append("refused")

    for _ in range(3):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        rlock.release()
    assert errors == [False, "refused", False, "refused", False, "refused"]
    with pytest.raises((AssertionError, RuntimeError)):
        rlock.release()
    thread = threading.Thread(target=other_thread)  # free now: another thread gets it
    thread.start()
    thread.join()
    assert errors[-1] is True


def bounded_release(sem):
    sem.release()


def test_semaphores_count_and_a_bounded_one_refuses_extra_releases(shared):
    sem = shared.Semaphore(2)
    assert sem.acquire() and sem.acquire(timeout=1) and not sem.acquire(timeout=0.2)
    sem.release()
    sem.release()
    sem.release()  # unbounded: fine
    assert sem.get_value() == 3
    bounded = shared.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()


def meet(barrier, out):
    out.put(barrier.wait(20))


def test_a_barrier_across_3_processes_then_broken_by_a_timeout(shared):
    barrier, out = shared.Barrier(3), shared.Queue()
    procs = [in_other_process(meet, barrier, out) for _ in range(2)]
    mine = barrier.wait(20)
    theirs = sorted([out.get(timeout=20) for _ in procs])
    assert sorted([mine, *theirs]) == [0, 1, 2]
    for proc in procs:
        proc.join(10)
    assert barrier.parties == 3 and barrier.n_waiting == 0 and not barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.3)  # alone: times out and breaks it
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(1)
    barrier.reset()
    assert not barrier.broken


def set_later(event, delay):
    time.sleep(delay)
    event.set()


def test_event_wakes_a_waiter_and_times_out_when_not_set(shared):
    event = shared.Event()
    assert event.wait(0.2) is False and not event.is_set()
    proc = in_other_process(set_later, event, 0.3)
    started = time.monotonic()
    assert event.wait(20) is True
    assert time.monotonic() - started < 10
    proc.join(10)
    event.clear()
    assert not event.is_set()


def notify_later(cond, box):
    with cond:
        box.put("ready")
        cond.notify()


def test_condition_wait_is_notified_and_wait_for_times_out(shared):
    cond, box = shared.Condition(), shared.Queue()
    with cond:
        proc = in_other_process(notify_later, cond, box)
        assert cond.wait(20) is True
    assert box.get(timeout=5) == "ready"
    proc.join(10)
    with cond:
        assert cond.wait_for(lambda: False, timeout=0.2) is False
    with pytest.raises((AssertionError, RuntimeError)):
        cond.wait(0.1)  # not holding the lock


def consume(q, seen):
    while True:
        item = q.get(timeout=20)
        seen.put(item)
        q.task_done()
        if item is None:
            return


def test_joinable_queue_join_waits_for_every_task_done(shared):
    q, seen = shared.JoinableQueue(), shared.Queue()
    proc = in_other_process(consume, q, seen)
    for item in [1, 2, None]:
        q.put(item)
    q.join()
    assert [seen.get(timeout=5) for _ in range(3)] == [1, 2, None]
    proc.join(10)
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()


def test_simple_queue(shared):
    q = shared.SimpleQueue()
    assert q.empty()
    q.put((1, "a"))
    assert not q.empty() and q.get() == (1, "a")


def bump(d, lst, ns, lock, n):
    for _ in range(n):
        with lock:
            d["count"] = d.get("count", 0) + 1
        lst.append(os.getpid())
    ns.done = True


def test_manager_proxies_behave_as_the_stdlibs_and_are_shared(shared):
    with shared.Manager() as manager:
        d = manager.dict({"a": 1}, b=2)
        d["c"] = 3
        d["a"] = 10
        assert d.keys() == ["a", "b", "c"] and d.items() == [("a", 10), ("b", 2), ("c", 3)]
        assert d.get("zz", 5) == 5 and "b" in d and len(d) == 3
        assert d.pop("b") == 2 and d.pop("b", None) is None
        with pytest.raises(KeyError):
            d["b"]
        assert d.setdefault("e", [1]) == [1] and d.popitem() == ("e", [1])
        assert d.copy() == {"a": 10, "c": 3}
        lst = manager.list([3, 1, 2])
        lst.append(4)
        lst.insert(1, "x")
        lst.insert(-1, "y")
        assert list(lst) == [3, "x", 1, 2, "y", 4] and lst[-1] == 4 and lst[1:3] == ["x", 1]
        assert lst.pop(1) == "x" and lst.pop() == 4
        del lst[-1]
        lst.remove(1)
        with pytest.raises(ValueError):
            lst.remove(99)
        with pytest.raises(IndexError):
            lst[10]
        lst.extend([0, 5])
        lst.sort()
        assert list(lst) == [0, 2, 3, 5] and len(lst) == 4
        lst[0] = 9
        assert lst[0] == 9
        ns = manager.Namespace(x=1)
        ns.y = "two"
        assert (ns.x, ns.y) == (1, "two")
        with pytest.raises(AttributeError):
            _ = ns.missing
        value, array = manager.Value("i", 7), manager.Array("i", [1, 2, 3])
        value.value += 1
        array[1] = 20
        assert value.value == 8 and value.get() == 8 and list(array) == [1, 20, 3]
        assert len(array) == 3
        counts, pids, flags, lock = manager.dict(), manager.list(), manager.Namespace(), \
            manager.Lock()
        procs = [in_other_process(bump, counts, pids, flags, lock, 20) for _ in range(3)]
        for proc in procs:
            proc.join(30)
        assert counts["count"] == 60 and len(pids) == 60 and flags.done is True


SHARED: dict = {}


def keep_shared(d, q):
    SHARED.update(d=d, q=q)


def use_shared(args):
    i, lock, event = args
    with lock:
        SHARED["d"][i] = i * i
    SHARED["q"].put(i)
    return event.wait(30) and SHARED["d"]["factor"] * i


def test_manager_proxies_in_pool_initargs_and_primitives_in_tasks_on_workers(embedded):
    manager = poncho_mp.Manager()
    d, q = manager.dict(factor=3), manager.Queue()
    lock, event = poncho_mp.Lock(), poncho_mp.Event()
    event.set()
    with poncho_mp.Pool(2, initializer=keep_shared, initargs=(d, q)) as pool:
        out = pool.map(use_shared, [(i, lock, event) for i in range(6)], chunksize=1)
    assert out == [3 * i for i in range(6)]
    assert sorted(q.get(timeout=10) for _ in range(6)) == list(range(6))
    assert {k: d[k] for k in range(6)} == {i: i * i for i in range(6)}
    manager.shutdown()
    assert [k for k in poncho_mp.get_store().scan_keys() if ":manager:" in k] == []


# A library that imports the stdlib's multiprocessing itself, as pandarallel does: a context
# taken at import, Manager().Queue() for progress, Pool.starmap_async for the work.
LIBRARY = '''
import multiprocessing

CONTEXT = multiprocessing.get_context("fork")


def _work(fn, progress, index, chunk):
    out = [fn(x) for x in chunk]
    progress.put((index, len(out)))
    return out


def parallel_map(fn, data, nb_workers=2):
    manager = CONTEXT.Manager()
    progress = manager.Queue()
    chunks = [data[i::nb_workers] for i in range(nb_workers)]
    pool = CONTEXT.Pool(nb_workers)
    promise = pool.starmap_async(_work, [(fn, progress, i, c) for i, c in enumerate(chunks)])
    done = sorted(progress.get(timeout=120) for _ in chunks)
    results = promise.get(timeout=300)
    pool.close()
    pool.join()
    manager.shutdown()
    return done, results
'''


def import_library(tmp_path, name):
    import importlib.util

    path = tmp_path / f"{name}.py"
    path.write_text(LIBRARY)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # not installed on the workers
    return module


def test_patch_runs_a_library_that_imports_multiprocessing_itself_on_workers(embedded,
                                                                              tmp_path):
    plain = import_library(tmp_path, "mp_library_plain")
    with poncho_mp.patch() as patched:
        assert sys.modules["multiprocessing"] is patched
        ours = import_library(tmp_path, "mp_library_patched")
    assert sys.modules["multiprocessing"] is multiprocessing
    assert isinstance(ours.CONTEXT, poncho_mp.context.PonchoContext)
    assert plain.CONTEXT is STD
    data = list(range(40))
    expected = plain.parallel_map(square, data)
    assert ours.parallel_map(square, data) == expected
    assert expected == ([(0, 20), (1, 20)], [[x * x for x in data[0::2]],
                                             [x * x for x in data[1::2]]])


def test_patch_gives_the_machinery_the_real_module_and_dill_the_globals_by_value():
    dill = pytest.importorskip("dill")
    before = dill.settings["recurse"]
    code = "import multiprocessing\nget_context = multiprocessing.get_context\n"
    with poncho_mp.patch():
        library, late_part_of_ours = {"__name__": "a_library"}, {"__name__": "parsl.x"}
        exec(code, library)  # noqa: S102 - imports as a module first imported while patched
        exec(code, late_part_of_ours)  # noqa: S102
        assert library["get_context"] == poncho_mp.get_context
        assert late_part_of_ours["get_context"] == multiprocessing.get_context  # no recursion
        assert dill.settings["recurse"] is True  # pandarallel's functions need no __main__
        # from-imports go through importlib's frames: the importer decides
        from_code = "from multiprocessing import get_context\n"
        library, parsl_part = {"__name__": "a_library"}, {"__name__": "parsl.y"}
        exec(from_code, library)  # noqa: S102
        exec(from_code, parsl_part)  # noqa: S102
        assert library["get_context"] == poncho_mp.get_context
        assert parsl_part["get_context"] == multiprocessing.get_context
    assert dill.settings["recurse"] == before


def test_a_submodule_first_imported_while_patched_stays_on_the_real_module():
    import sys

    real = sys.modules["multiprocessing"]
    saved = sys.modules.pop("multiprocessing.dummy", None)
    had = "dummy" in vars(real)
    if had:
        delattr(real, "dummy")
    try:
        with poncho_mp.patch():
            import multiprocessing.dummy  # noqa: F401
        assert sys.modules["multiprocessing"] is real
        assert real.dummy is sys.modules["multiprocessing.dummy"]
        assert not hasattr(real, "_poncho_ours")
    finally:
        if saved is not None:
            sys.modules["multiprocessing.dummy"] = saved
            real.dummy = saved


# -- a Lock between Processes; a Value's lock (ours: Processes on workers, the store's Lock) --
def hold_lock_then_nap(lock, conn, seconds):
    lock.acquire()
    conn.send("held")
    time.sleep(seconds)
    lock.release()
    conn.close()


def try_lock(lock, conn):
    started = time.monotonic()
    got = lock.acquire(timeout=1.0)
    conn.send((got, time.monotonic() - started))
    conn.close()


def count_up(counter, times):
    for _ in range(times):
        with counter.get_lock():
            counter.value += 1


def test_a_lock_held_by_one_process_times_out_in_another(mp):
    lock = mp.Lock()
    holder_says, holder_end = mp.Pipe()
    trier_says, trier_end = mp.Pipe()
    holder = mp.Process(target=hold_lock_then_nap, args=(lock, holder_end, 4.0))
    holder.start()
    holder_end.close()
    assert holder_says.recv() == "held"
    trier = mp.Process(target=try_lock, args=(lock, trier_end))
    trier.start()
    trier_end.close()
    got, waited = trier_says.recv()
    assert got is False and 0.9 <= waited < 3.0
    assert lock.acquire(timeout=60)  # the holder releases it after its nap
    lock.release()
    for process in (holder, trier):
        process.join(120)
        assert process.exitcode == 0


def test_a_value_made_here_counts_under_its_lock_across_processes(mp):
    counter = mp.Value("i", 0)
    processes = [mp.Process(target=count_up, args=(counter, 40)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert counter.value == 80
