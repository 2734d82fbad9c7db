# The two commands a newcomer needs: `make console` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: console test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

console: $(VENV)/.installed
	$(VENV)/bin/opsdash

test: $(VENV)/.installed
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/bench_engine.py
