# Everyday commands. `make up` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup system-deps up test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# System packages the tests use, installed when missing (Debian/Ubuntu, as root): PostgreSQL's
# server, for the tests that run on both SQLite and PostgreSQL; Chromium, for the dashboard's
# browser tests; bubblewrap, the sandbox the agents' commands run in.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing system packages:$$missing (install them as root; without them some tests skip)"; \
	  fi; \
	fi

up: setup  ## the embedded stack: Temporal dev server (persisted), worker, API on :8000
	$(BIN)/crewline up

test: setup  ## the whole suite (what CI runs)
	$(BIN)/pytest

test-fast: setup  ## the everyday loop: the tests that need no server (seconds)
	$(BIN)/pytest -m "not slow" -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .crewline .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: setup  ## benchmarks (~15 min): crewline vs the floor and the peers, then the harness; JSON in bench/results/
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.systems --rounds 5 --scaling --burst 1000
	$(BIN)/python -m bench.systems --rounds 5 --tools 3 --out bench/results/systems-tools.json
	$(BIN)/python -m bench.sse
	$(BIN)/python -m bench
