"""The pool's link to the executor, without workers: what a chunk submits (spec keys, cached
inputs, the initializer's file), what the analysis of a chunk covers, and reading the workers'
cores from work_queue_status."""

from __future__ import annotations

import sys
from concurrent.futures import Future
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from parsl_poncho.analyze import Analyzer
from parsl_poncho.errors import TaskSerializationError
from parsl_poncho.exec_modes import CACHED_INPUTS_KEY, SERVER_KEY, ServerScope
from parsl_poncho.multiprocessing import _chunk
from parsl_poncho.multiprocessing.link import APPLY, MAP, PoolLink, cores_in_status
from parsl_poncho.workqueue import FileToWq

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def init_with_numpy(size):
    import numpy

    global GRID
    GRID = numpy.zeros(size)


def plain(x):
    return x


class RecordingExecutor:
    """Stands in for PonchoExecutor.submit (an external boundary here): records each call."""

    def __init__(self) -> None:
        self.calls: list = []

    def submit(self, func, resource_specification, *args, **kwargs):
        self.calls.append((func, resource_specification, args))
        done: Future = Future()
        done.set_result([])
        return done


def test_a_pool_with_an_initializer_submits_serverless_chunks_to_its_own_server():
    executor = RecordingExecutor()
    link = PoolLink(executor, init_with_numpy, (3,), max_calls=7)
    try:
        extra = FileToWq("/data/x.npy", "arg-abc.npy", cache=True)
        link.submit_chunk(MAP, plain, [1, 2], cached_inputs=[extra])
        link.submit_chunk(APPLY, plain, [((1,), {})])
        (runner, spec, args), (runner2, _spec2, _args2) = executor.calls
        assert runner is runner2 and runner.__name__ == "plain"  # one runner per function
        assert runner.__qualname__ == f"run_chunk[{__name__}.plain]"
        assert spec["exec_mode"] == "serverless"
        scope = spec[SERVER_KEY]
        assert isinstance(scope, ServerScope) and scope.pool == link.key
        assert scope.max_calls == 7 and scope.init.startswith("poncho-init-")
        init_file, shipped = spec[CACHED_INPUTS_KEY]
        assert init_file.remote == scope.init and init_file.cache and shipped == extra
        assert Path(init_file.local).is_file()
        kind, func, items, ref = args
        assert (kind, func, items, ref.name) == (MAP, plain, [1, 2], scope.init)
        assert cloudpickle.loads(cloudpickle.dumps(ref)) == (scope.init, None, ())
    finally:
        link.close()
    assert not Path(init_file.local).exists()


def test_a_pool_without_initializer_uses_the_envs_shared_server():
    executor = RecordingExecutor()
    link = PoolLink(executor)
    link.submit_chunk(MAP, plain, [1])
    (_runner, spec, args), = executor.calls
    assert spec == {"exec_mode": "serverless"} and args[-1] is None


def test_an_initializer_that_cannot_be_pickled_is_named():
    import threading

    lock = threading.Lock()
    with pytest.raises(TaskSerializationError, match=r"positional argument 0 \(lock"):
        PoolLink(RecordingExecutor(), plain, (lock,))


def test_the_analysis_of_a_chunk_covers_function_initializer_and_argument_types():
    analyzer = Analyzer()
    runner = _chunk.runner_for(*_chunk.runner_name(plain))
    ref = _chunk.InitRef("poncho-init-x.pkl", init_with_numpy, (3,))
    _spec, requirements = analyzer.analyze_call(runner, MAP, plain, [1, 2], ref)
    assert "numpy" in requirements.modules  # from the initializer's body only
    _spec, requirements = analyzer.analyze_call(runner, MAP, plain, [np.zeros(2)], None)
    assert "numpy" in requirements.modules  # from the items' type only
    _spec, requirements = analyzer.analyze_call(runner, MAP, plain, [1], None)
    assert not any(m.startswith(("numpy", "parsl")) for m in requirements.modules)


def test_cores_come_from_the_core_a_column_of_work_queue_status():
    text = ("HOST       ADDRESS         COMPLETED RUNNING CORE_U CORE_A MEM_U MEM_A\n"
            "vm         127.0.0.1:60768         0 0       0      2      0     24105\n"
            "vm2        10.0.0.2:6000           3 1       1      8      10    4000\n")
    assert cores_in_status(text) == 10
    assert cores_in_status("HOST ADDRESS CORES\nn1 1.2.3.4:5 4\n") == 4
    assert cores_in_status("") == 0
    assert cores_in_status("something else\n") == 0
