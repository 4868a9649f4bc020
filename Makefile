# The two commands a newcomer needs: `make demo` and `make test`.
# Both create or refresh the virtual environment first (scripts/ensure_venv.sh).
SHELL := /bin/bash
VENV = $(shell scripts/ensure_venv.sh)
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench lock

venv:
	@scripts/ensure_venv.sh

demo:
	@venv=$$(scripts/ensure_venv.sh) && "$$venv/bin/amyloidkd" demo --out demo_output

test:
	@venv=$$(scripts/ensure_venv.sh) && scripts/run_tests.sh "$$venv" $(PYTEST_ARGS)

test-fast:
	@venv=$$(scripts/ensure_venv.sh) && scripts/run_tests.sh "$$venv" -m "not slow" $(PYTEST_ARGS)

# Re-resolve the lock from pyproject's ranges (needs the package registry).
lock:
	@scripts/make_lock.sh
