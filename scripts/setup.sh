#!/bin/sh
# Set up everything parsl-poncho and its tests need on a fresh Debian machine, idempotently:
#   - Debian packages: Work Queue (coop-computing-tools, python3-workqueue), and the tools the
#     tests use: busybox (a busybox-only worker node), shellcheck (POSIX-sh lint of the shims),
#     slurm-wlm and munge (a one-node Slurm cluster);
#   - a virtual environment in ./.venv with parsl-poncho installed editable with its test
#     extras, every package pinned by constraints.txt (the test lock; see README "Development");
#   - PyTorch's CPU build (torch==...+cpu in the lock) for the PyTorch end-to-end test: PyPI
#     has no +cpu builds, so it comes from wherever this host's pip configuration finds it.
# Usage: sh scripts/setup.sh            (re-running is cheap: each step is skipped when done)
#        LOCK=none sh scripts/setup.sh  (newest releases instead of the lock: `make test-latest`)
#        VENV=DIR                        (another virtual environment than .venv)
set -eu
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

# command -> Debian package; a package is installed when its command (or file) is missing.
need=""
for pair in work_queue_worker:coop-computing-tools \
            /usr/lib/python3/dist-packages/work_queue.py:python3-workqueue \
            busybox:busybox shellcheck:shellcheck \
            slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge \
            redis-server:redis-server redis-cli:redis-tools; do
    what=${pair%%:*}
    pkg=${pair#*:}
    case $what in
        /*) [ -e "$what" ] && continue ;;
        *) command -v "$what" >/dev/null 2>&1 && continue ;;
    esac
    case " $need " in *" $pkg "*) ;; *) need="$need $pkg" ;; esac
done
if [ -n "$need" ]; then
    say "installing Debian packages:$need"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086 # $need is a list of package names
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
else
    say "Debian packages already installed (Work Queue, busybox, shellcheck, Slurm, munge, Redis)"
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for `python3 -m venv`
    say "installing python3-venv with apt-get"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
VENV="${VENV:-.venv}"
LOCK="${LOCK:-constraints.txt}"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.parsl-poncho-installed"
if [ "$LOCK" = none ]; then
    say "installing parsl-poncho (editable) with the NEWEST releases of everything into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
    # the newest torch on PyPI is a CUDA build of several GB: keep the lock's CPU build
    torch=$(grep '^torch==' constraints.txt || true)
    [ -z "$torch" ] || "$VENV/bin/python" -m pip install -q "$torch"
    rm -f "$stamp"
elif [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ "$LOCK" -nt "$stamp" ]; then
    say "installing parsl-poncho (editable) with its test extras into $VENV, pinned by $LOCK"
    "$VENV/bin/python" -m pip install -q -c "$LOCK" -e '.[test]'
    torch=$(grep '^torch==' "$LOCK" || true)
    if [ -n "$torch" ]; then
        say "installing $torch (for the PyTorch test) from this host's pip configuration"
        "$VENV/bin/python" -m pip install -q -c "$LOCK" "$torch" ||
            say "WARNING: $torch could not be installed: the PyTorch test fails under CI"
    fi
    touch "$stamp"
else
    say "parsl-poncho already installed in $VENV (pinned by $LOCK)"
fi
