# `make demo` and `make test` each create .venv and install everything they need.
# torch is installed first and pinned (the CPU wheel), so no resolver pulls CUDA packages;
# packages listed in [tool.ragtune].install-without-deps are installed with --no-deps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragtune-installed
PYPROJECT_GET = $(PYTHON) -c "import tomllib,sys; p=tomllib.load(open('pyproject.toml','rb')); print(' '.join($(1)))"

.PHONY: demo test test-slow test-cluster clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $$($(call PYPROJECT_GET,d for d in p['project']['dependencies'] if d.startswith('torch==')))
	$(BIN)/python -m pip install -q --no-deps $$($(call PYPROJECT_GET,p['tool']['ragtune']['install-without-deps']))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ragtune quickstart

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster

clean-venv:
	rm -rf $(VENV)
