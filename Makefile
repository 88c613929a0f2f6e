# The two quick-start commands: `make up` (install, fetch models, start the mesh and the chat UI) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# llama-cpp-python compiles from source; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: up test lint install models chromium bench clean phoenix

up: install models
	$(VENV)/bin/chatqna up

test: lint models chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The gates, before any test: lint, formatting and types (configured in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml comps/core/_otlp.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[all,dev]'
	touch $@

models: install
	$(VENV)/bin/chatqna models fetch

# The chat UI's browser tests drive Debian's chromium with Playwright (Playwright's own browser download is not
# used): installed here when missing and we are root (CI on a fresh machine), else say how.
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq chromium; } \
		|| { echo "the browser tests need chromium: sudo apt-get install -y chromium" >&2; exit 1; }

# Arize Phoenix (LLM traces) in its own virtualenv, its dependencies apart from ours; serves on 127.0.0.1:6006.
PHOENIX_VENV ?= .state/phoenix-venv
phoenix: $(PHOENIX_VENV)/bin/phoenix
	PHOENIX_HOST=127.0.0.1 PHOENIX_WORKING_DIR=.state/phoenix $(PHOENIX_VENV)/bin/phoenix serve

$(PHOENIX_VENV)/bin/phoenix:
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install --quiet arize-phoenix==20.26.1

clean:
	rm -rf $(VENV) .state .pytest_cache
