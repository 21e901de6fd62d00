"""pandarallel's ``parallel_apply`` end to end (issue 20): a pandarallel user's program
(tests/e2e/pandarallel/program.py), unmodified except for one ``patch()`` call before
``from pandarallel import pandarallel``, on workers that see neither the host's Python nor its
/dev/shm (tests/e2e/pandarallel/remote_worker.sh, as on another node); the same program under
the standard library gives the expected results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from tools import can_hide_host_python, require

SCENARIO = Path(__file__).parent / "e2e" / "pandarallel"
RUN_EMBEDDED = Path(__file__).parent / "e2e" / "mp_process" / "run_embedded.py"
IMPORT_LINE = "from pandarallel import pandarallel\n"
PATCH_LINES = "import parsl_poncho.multiprocessing\nparsl_poncho.multiprocessing.patch()\n"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not Path("/root/.pyenv").is_dir(), reason="needs the pyenv host Python"),
]


def patched(program: Path, dest: Path) -> Path:
    """``program`` with one ``patch()`` call (and its import) before pandarallel's import."""
    text = program.read_text()
    assert text.count(IMPORT_LINE) == 1
    dest.write_text(text.replace(IMPORT_LINE, PATCH_LINES + IMPORT_LINE))
    return dest


def run_both(tmp_path: Path, request: pytest.FixtureRequest, **extra: str
             ) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, float]:
    """The program under the standard library, then patched on remote-like workers; and the
    seconds the second run took."""
    require(can_hide_host_python(), "unshare --mount with tmpfs needs root")
    pytest.importorskip("pandarallel")
    cache = request.config.cache.mkdir("parsl-poncho-mp-envs")  # shared with the other mp tests
    env = {**os.environ, "PONCHO_CACHE": str(cache), "WORKER": str(SCENARIO / "remote_worker.sh"),
           "PARSL_PONCHO_WORKER_CACHE": str(tmp_path / "wcache"), **extra}
    program = SCENARIO / "program.py"
    stdlib = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    started = time.monotonic()
    ours = subprocess.run([sys.executable, str(RUN_EMBEDDED),
                           str(patched(program, tmp_path / "program.py"))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    return stdlib, ours, time.monotonic() - started


def report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parallel_apply_with_use_memory_fs_false_gives_the_standard_librarys_results(
        tmp_path, request):
    stdlib, ours, _ = run_both(tmp_path, request, MEMORY_FS="off")
    expected, got = report(stdlib), report(ours)

    for key in ("scores", "squares", "spreads"):
        assert got[key] == expected[key], key
    assert len(got["scores"]) == 2000 and len(got["spreads"]) == 5
    host_pandas = {seen["pandas"] for seen in expected["where"]}
    assert host_pandas == {version("pandas")}  # this venv's, from the test lock
    for seen in got["where"]:  # pandas, pandarallel and dill came with the analysed env
        assert seen["prefix"].startswith(str(tmp_path / "wcache")), seen
        assert seen["saw_pyenv"] is False and seen["pandas"] in host_pandas, seen


def test_pandarallels_default_memory_fs_fails_at_once_naming_the_fix(tmp_path, request):
    before = set(Path("/dev/shm").glob("pandarallel_input_*"))
    stdlib, ours, seconds = run_both(tmp_path, request, MEMORY_FS="default")
    try:
        report(stdlib)  # on one host, /dev/shm is shared: the default works
        assert ours.returncode != 0, ours.stdout[-2000:]
        assert seconds < 300  # an error, not a hang
        assert "FileNotFoundError" in ours.stderr, ours.stderr[-5000:]
        assert "/dev/shm/pandarallel_input_" in ours.stderr
        assert "is a file on the submit host, but the task ran on a worker node" in ours.stderr
        assert "pandarallel.initialize(use_memory_fs=False)" in ours.stderr
    finally:  # pandarallel leaves the inputs no worker read in this host's /dev/shm
        for path in set(Path("/dev/shm").glob("pandarallel_input_*")) - before:
            path.unlink(missing_ok=True)
