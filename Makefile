# The two quick-start commands (see README.md) and a few helpers.
.PHONY: setup quickstart test test-quick test-long test-latest lock lint bench

setup:
	@sh scripts/setup.sh

# Sets everything up, then runs the main job: a Parsl workflow on local Work Queue workers.
quickstart: setup
	.venv/bin/python examples/pi_montecarlo.py

# The test suite, end-to-end tests included (CI runs exactly this), from the lock.
test: setup
	.venv/bin/python -m ruff check parsl_poncho worker_shim tests bench examples
	.venv/bin/python -m pytest

test-quick: setup
	.venv/bin/python -m pytest -m "not slow"

test-long: setup
	.venv/bin/python -m pytest -m long

# The suite against the newest releases of every dependency (not CI): finds upstream drift
# on purpose, in its own .venv-latest.
test-latest:
	@VENV=.venv-latest LOCK=none sh scripts/setup.sh
	@echo '==> versions that differ from the lock (< lock, > newest):'
	@sed '/^#/d' constraints.txt > .venv-latest/lock.txt
	@.venv-latest/bin/python -m pip freeze --exclude-editable | diff .venv-latest/lock.txt - | grep '^[<>]' || true
	.venv-latest/bin/python -m pytest

# Refresh the lock (constraints.txt) from the newest releases; then run `make test`.
lock:
	rm -rf .venv-lock
	@VENV=.venv-lock LOCK=none sh scripts/setup.sh
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

lint:
	.venv/bin/python -m ruff check .
