# `make test` and `make demo` install what they need themselves (a local .venv, pip as this
# machine is set up), so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m orchestrator.sweep experiments/digits.yaml

lint: $(STAMP)
	$(PY) -m ruff check prune_core orchestrator tests benchmarks
	$(PY) -m ruff format --check prune_core orchestrator tests benchmarks

clean:
	rm -rf $(VENV) mlruns mlflow.db results .pytest_cache
