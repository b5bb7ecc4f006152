# `make test` and `make demo` install what they need themselves (a local .venv, pip as this
# machine is set up), so they work on a fresh clone. They install requirements-lock.txt: the
# exact versions the suite passed with. `make upgrade-lock` moves the lock to the newest
# releases; `make test-latest` tries the newest releases without touching the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements-lock.txt
STAMP := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: install test demo lint clean upgrade-lock test-latest

$(PY):
	$(PYTHON) -m venv $(VENV)

# the lock first, then the project without resolving anything again (--no-deps)
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m orchestrator.sweep experiments/digits.yaml

lint: $(STAMP)
	$(PY) -m ruff check prune_core orchestrator tests benchmarks
	$(PY) -m ruff format --check prune_core orchestrator tests benchmarks

# Every extra (dev, deploy, bench, ...) in one lock, resolved by pip-tools with pip's own
# configuration (how this machine finds torch); pip's constraint file, where the machine has
# one, is passed on explicitly (pip-compile does not read it: it capped torch at the release on
# disk). No index or find-links lines: a cluster node has neither. Then the venv is matched.
PIP_CAP := $(wildcard /etc/xdg/pip/constraints.txt)
upgrade-lock: | $(PY)
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile --quiet --upgrade --all-extras --strip-extras --no-emit-index-url \
		--no-emit-find-links $(if $(PIP_CAP),--constraint $(PIP_CAP)) \
		--output-file $(LOCK) pyproject.toml
	$(PY) -m pip install -q -r $(LOCK)
	touch $(STAMP)

# The newest releases of everything (no lock) in a venv of their own: the fast test tier and a
# 2-trial digits sweep with each sampler, so a breaking release shows the day it ships.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev,hf]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/freeze.txt
	$(LATEST)/bin/python -m pytest -m "not sweep" -p no:cacheprovider \
		--deselect tests/test_orchestrator_versions.py::test_the_lock_pins_every_key_package_at_its_installed_version
	$(LATEST)/bin/python .ci/sweep_each_sampler.py

clean:
	rm -rf $(VENV) $(LATEST) mlruns mlflow.db results .pytest_cache
