# The dev loop in one word: `make test`, `make lint`, `make run`, `make bench`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv run self-check test lint fmt bench clean

$(BIN)/vouch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/vouch

## Run vouch's main job on embedded defaults: the trust server on
## https://127.0.0.1:4443, SQLite and a development CA in .vouch/.
run: venv
	$(BIN)/vouch server

self-check: venv
	$(BIN)/vouch self-check

## The whole test suite (lint and type checks included).
test: venv lint
	$(BIN)/pytest -n 2 tests

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: venv
	$(BIN)/python bench/core.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
