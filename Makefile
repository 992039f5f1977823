# Two entry points for a fresh machine: `make quickstart` runs the quickstart sweep, `make test` the tests.
# Both create .venv and install otu (CPU torch) first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install quickstart test test-slow test-faults lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install  # extra otu flags: make quickstart ARGS="--set search.num_samples=2"
	$(VENV)/bin/otu sweep sweeps/quickstart.yaml $(ARGS)

lint: install  # ruff (lint and format) and mypy
	$(VENV)/bin/ruff check platform tests benchmarks
	$(VENV)/bin/ruff format --check platform tests benchmarks
	$(VENV)/bin/mypy

test: lint  # the default suite on two workers, then the slow fault tests (CI runs this)
	$(VENV)/bin/pytest -q -n 2 --durations=25
	$(VENV)/bin/pytest -q -m slow tests/test_faults.py

test-slow: install
	$(VENV)/bin/pytest -q -m slow

# the slow fault tests CI runs too: concurrent first use of a store, killed runs, kill-and-resume
test-faults: install
	$(VENV)/bin/pytest -q -m slow tests/test_faults.py
