#!/bin/sh
# Run Parsl's own generic test suite against an executor config (not part of the default
# test run: it takes 8+ minutes on 2 cores).
#
#   tests/parsl_suite/run.sh [poncho|stock] [extra pytest args...]
#
# Makes (once) a separate virtual environment with the parsl version of the project's venv and
# the suite's test dependencies (pytest<8, pytest-random-order, pytest-timeout, pandas,
# sqlalchemy), installs this checkout into it (editable), and runs
#   pytest <parsl>/tests -k "not cleannet and not unix_filesystem_permissions_required" \
#          --config tests/parsl_suite/{config,stock_config}.py -rs --timeout 180
# Environment: SUITE_TESTS (a path under parsl/tests to run only part), SUITE_VENV (default ~/.cache/parsl-poncho/suite-venv), PYTHON (interpreter for
# the venv, default /root/.pyenv/versions/3.11.7/bin/python or python3).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
which=${1:-poncho}
[ $# -gt 0 ] && shift
case $which in
    poncho) config=$here/config.py ;;
    stock) config=$here/stock_config.py
           PYTHONPATH=$here/stock_alias${PYTHONPATH:+:$PYTHONPATH}
           export PYTHONPATH ;;
    *) echo "usage: $0 [poncho|stock] [pytest args...]" >&2; exit 64 ;;
esac
venv=${SUITE_VENV:-$HOME/.cache/parsl-poncho/suite-venv}
python=${PYTHON:-/root/.pyenv/versions/3.11.7/bin/python}
[ -x "$python" ] || python=python3
parsl_version=$("$root/.venv/bin/python" -c 'import importlib.metadata as m; print(m.version("parsl"))')
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import parsl_poncho, sqlalchemy, random_order, uv" 2>/dev/null; then
    uv=$root/.venv/bin/uv
    [ -x "$uv" ] || uv=uv
    "$uv" venv --clear --python "$python" "$venv"
    VIRTUAL_ENV=$venv "$uv" pip install "parsl==$parsl_version" "pytest<8" pytest-random-order \
        pytest-timeout pandas "sqlalchemy>=2,<2.1" uv -e "$root"
fi
tests=$("$venv/bin/python" -c 'import parsl, os; print(os.path.join(os.path.dirname(parsl.__file__), "tests"))')/${SUITE_TESTS:-}
cd "$(mktemp -d)"
PATH=$venv/bin:$PATH exec "$venv/bin/python" -m pytest "$tests" \
    -k "not cleannet and not unix_filesystem_permissions_required" \
    --config "$config" -rs --timeout 180 -p no:cacheprovider "$@"
