# The two quick-start commands (see README.md) and a few helpers.
.PHONY: setup quickstart test test-quick test-long lint bench

setup:
	@sh scripts/setup.sh

# Sets everything up, then runs the main job: a Parsl workflow on local Work Queue workers.
quickstart: setup
	.venv/bin/python examples/pi_montecarlo.py

# The test suite, end-to-end tests included (CI runs exactly this).
test: setup
	.venv/bin/python -m ruff check parsl_poncho worker_shim tests bench examples
	.venv/bin/python -m pytest

test-quick: setup
	.venv/bin/python -m pytest -m "not slow"

test-long: setup
	.venv/bin/python -m pytest -m long

lint:
	.venv/bin/python -m ruff check .
