# Two entry points for a fresh machine: `make quickstart` runs the quickstart sweep, `make test` the tests.
# Both create .venv and install otu (CPU torch) first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install quickstart test test-slow lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/otu sweep sweeps/quickstart.yaml

test: install
	$(VENV)/bin/ruff check platform tests benchmarks
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow
