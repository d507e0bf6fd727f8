# Two commands do everything on a fresh machine with Python 3.11+:
#   make serve   set up .venv and serve the bundled functions on http://127.0.0.1:54321
#   make test    set up .venv and run lint, type checks and the whole test suite
#   make unit    only the unit tier (tests/unit), in seconds
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test unit lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("edgeruntime needs Python 3.11 or newer (found %s); set PYTHON=python3.11" % sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/edgeruntime serve functions

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check edgeruntime tests
	$(VENV)/bin/lint-imports --no-cache pyproject.toml importlinter.ini
	$(VENV)/bin/hadolint Dockerfile

typecheck: $(STAMP)
	$(PY) -m mypy

# The whole suite on up to four cores (pytest-xdist): the tests of one file run in one worker, one
# after another (the variants of a test that starts several servers never run side by side).
# PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
pytest: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# The unit tier alone (tests/unit: no sockets, no processes, no sleeping), in seconds.
unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .edgeruntime .mypy_cache .ruff_cache
