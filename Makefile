# Everyday commands. `make up` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup up test lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

up: setup  ## the embedded stack: Temporal dev server (persisted), worker, API on :8000
	$(BIN)/crewline up

test: setup  ## the whole suite (what CI runs)
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .crewline .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: setup  ## benchmarks (several minutes): table on stdout, JSON in bench/results/
	$(BIN)/python -m bench
