"""A data-dependent physics-style workflow whose environment carries an http file and a git repo.

What it shows: the environment spec can carry data as well as packages. Here the executor adds
(1) a detector calibration table fetched over http, checked against its sha256, and (2) a
git repository of analysis cuts at a tag. Both are placed inside the environment when it is
built and exposed on workers as $CALIBRATION and $ANALYSIS_CONFIG. The workflow is
data-dependent: each run's events are simulated, calibrated and selected in a chain of apps,
and the final fit only starts once every selection is done.

So that it runs anywhere (no outside network), the script serves the calibration table from
a local HTTP server on 127.0.0.1 and makes the git repository in a temporary directory; on a
cluster these would be your real URL and remote.

Run:  .venv/bin/python examples/physics/workflow.py [--runs 4] [--events 20000]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import parsl
from parsl.app.app import python_app

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examples_common import local_config  # noqa: E402

CALIBRATION_PORT = 18765


@python_app
def simulate(run: int, n_events: int) -> list:
    """Raw detector energies (arbitrary units) for one run: a peak on a falling background."""
    import numpy as np

    rng = np.random.default_rng(run)
    signal = rng.normal(91.2, 2.5, n_events // 10)
    background = 40 + rng.exponential(30.0, n_events - n_events // 10)
    return (np.concatenate([signal, background]) / 1.02).tolist()


@python_app
def calibrate(raw: list) -> list:
    """Apply the gain from the calibration table the environment ships ($CALIBRATION)."""
    import csv
    import os

    with open(os.environ["CALIBRATION"]) as fh:
        gain = {row["channel"]: float(row["gain"]) for row in csv.DictReader(fh)}
    return [e * gain["ecal"] for e in raw]


@python_app
def select(energies: list) -> list:
    """Keep events inside the mass window from the analysis repo ($ANALYSIS_CONFIG/cuts.json)."""
    import json
    import os

    with open(os.path.join(os.environ["ANALYSIS_CONFIG"], "cuts.json")) as fh:
        cuts = json.load(fh)
    return [e for e in energies if cuts["low"] <= e <= cuts["high"]]


@python_app
def fit_peak(*selections: list) -> tuple:
    """Mean and width of the peak over all runs, and the number of events used."""
    import numpy as np

    values = np.concatenate([np.asarray(s) for s in selections])
    core = values[np.abs(values - np.median(values)) < 6]
    return float(core.mean()), float(core.std()), int(values.size)


def serve_calibration(directory: Path) -> http.server.ThreadingHTTPServer:
    """Serve ``directory`` on 127.0.0.1 in a background thread (stands in for a data server)."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", CALIBRATION_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_analysis_repo(directory: Path) -> str:
    """A git repository holding cuts.json, tagged v1 (made once); returns its file:// remote."""
    if (directory / ".git").is_dir():
        return directory.resolve().as_uri()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cuts.json").write_text('{"low": 80.0, "high": 100.0}\n')
    env = {**os.environ, "GIT_AUTHOR_NAME": "example", "GIT_AUTHOR_EMAIL": "ex@example.org",
           "GIT_COMMITTER_NAME": "example", "GIT_COMMITTER_EMAIL": "ex@example.org",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    for cmd in (["init", "-q"], ["add", "cuts.json"], ["commit", "-qm", "cuts"], ["tag", "v1"]):
        subprocess.run(["git", "-C", str(directory), *cmd], check=True, env=env)
    return directory.resolve().as_uri()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    # A stable place, so the spec (which names the repo and URL) and its env are reused.
    work = Path(tempfile.gettempdir()) / "parsl-poncho-physics-example"
    work.mkdir(exist_ok=True)
    table = b"channel,gain\necal,1.02\nhcal,0.97\n"
    (work / "calibration.csv").write_bytes(table)
    server = serve_calibration(work)
    data = {
        "http": {"CALIBRATION": {
            "url": f"http://127.0.0.1:{CALIBRATION_PORT}/calibration.csv",
            "type": "file", "sha256": hashlib.sha256(table).hexdigest()}},
        "git": {"ANALYSIS_CONFIG": {"remote": make_analysis_repo(work / "analysis"),
                                    "ref": "v1"}},
    }
    try:
        with parsl.load(local_config(data=data)):
            selections = [select(calibrate(simulate(run, args.events)))
                          for run in range(args.runs)]
            mean, width, used = fit_peak(*selections).result()
    finally:
        server.shutdown()
    print(f"peak at {mean:.2f} (width {width:.2f}) from {used} selected events "
          f"in {args.runs} runs")
    assert abs(mean - 91.2) < 1.0, mean


if __name__ == "__main__":
    main()
