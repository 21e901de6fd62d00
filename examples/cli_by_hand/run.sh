#!/bin/sh
# The PONCHO command-line tools by hand: analyze -> create -> run.
#
# What it shows: `poncho_package_analyze` turns a script into a pinned spec (python, pip,
# cloudpickle, numpy at the versions installed here); `poncho_package_create --offline` builds
# and packs it (python and pip come from a local channel seeded from this interpreter, numpy
# from PyPI); `poncho_package_run` unpacks it once into the node cache and runs the script
# inside it, with no access to this project's virtual environment.
#
# Run:  sh examples/cli_by_hand/run.sh        (from the project root; needs `make setup`)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$here/../.." && pwd)/.venv/bin
out=${TMPDIR:-/tmp}/parsl-poncho-cli-example
mkdir -p "$out"

echo "==> poncho_package_analyze analysis.py spec.json"
"$bin/poncho_package_analyze" "$here/analysis.py" "$out/spec.json"
cat "$out/spec.json"

echo "==> poncho_package_create --offline spec.json env.tar.gz"
"$bin/poncho_package_create" --offline "$out/spec.json" "$out/env.tar.gz"
ls -l "$out/env.tar.gz"

echo "==> poncho_package_run -e env.tar.gz -- python analysis.py"
# Run from a clean environment so nothing of the submit host's Python leaks in.
env -i HOME="$HOME" PATH=/usr/bin:/bin \
    "$bin/poncho_package_run" -e "$out/env.tar.gz" -- python "$here/analysis.py"
