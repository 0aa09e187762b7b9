# Pigeon: `make run` and `make test` work on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Two installs, each with its own stamp: `make run` needs only the runtime dependencies
# (`pip install -e .`); tests, lint, typecheck and bench add the dev tools (`.[dev]`).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
export PIGEON_DEMO ?= 1

.PHONY: run test lint typecheck check bench clean browser install install-run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

# `.[dev]` includes the runtime dependencies: the run stamp is brought up to date too.
$(DEV_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(RUN_STAMP)

install-run: $(RUN_STAMP)

install: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/pigeon db upgrade
	$(BIN)/pigeon serve

# The console's tests drive Debian's headless Chromium through its chromedriver.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# The whole suite runs twice: on SQLite, then on a PostgreSQL server the tests start themselves.
test: $(DEV_STAMP) browser
	$(BIN)/python -m pytest --db=sqlite $(PYTEST_ARGS)
	$(BIN)/python -m pytest --db=postgresql $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# Benchmarks (bounded in time, 127.0.0.1 only); wrk comes from Debian's packages.
bench: $(DEV_STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py

check: lint typecheck test

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
