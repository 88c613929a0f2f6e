# The two quick-start commands: `make up` (install, fetch models, start the mesh) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: up test install models bench clean

up: install models
	$(VENV)/bin/chatqna up

test: install models
	$(PY) -m pytest $(PYTEST_ARGS)

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
