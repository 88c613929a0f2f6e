# The two quick-start commands: `make up` (install, fetch models, start the mesh) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: up test lint install models bench clean

up: install models
	$(VENV)/bin/chatqna up

test: lint models
	$(PY) -m pytest $(PYTEST_ARGS)

# The gates, before any test: lint, formatting and types (configured in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[all,dev]'
	touch $@

models: install
	$(VENV)/bin/chatqna models fetch

clean:
	rm -rf $(VENV) .state .pytest_cache
