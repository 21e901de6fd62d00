#!/bin/sh
# Set up everything parsl-poncho needs on a fresh Debian machine, idempotently:
#   Work Queue (Debian's coop-computing-tools + python3-workqueue), a virtual environment in
#   ./.venv with parsl-poncho installed editable with its test extras.
# Usage: sh scripts/setup.sh            (re-running is cheap: each step is skipped when done)
set -eu
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if ! command -v work_queue_worker >/dev/null 2>&1 || [ ! -f /usr/lib/python3/dist-packages/work_queue.py ]; then
    say "installing Work Queue (coop-computing-tools, python3-workqueue) with apt-get"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq coop-computing-tools python3-workqueue >/dev/null
else
    say "Work Queue already installed: $(command -v work_queue_worker)"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    say "creating virtual environment .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.parsl-poncho-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    say "installing parsl-poncho (editable) with its test extras into .venv"
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
else
    say "parsl-poncho already installed in .venv"
fi
