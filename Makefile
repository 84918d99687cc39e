# trainflow: `make run` sets up .venv and runs the default pipeline; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export METAFLOW_USER ?= trainflow
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: setup run test lint typecheck clean leaderboard

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml package.json package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent bundle
	touch $(STAMP)

run: $(STAMP)
	$(PY) flows/train_flow.py run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check trainflow stages flows tests benchmarks scripts
	$(VENV)/bin/ruff format --check trainflow stages flows tests benchmarks scripts
	npm run --silent lint

typecheck: $(STAMP)
	$(VENV)/bin/mypy

leaderboard: $(STAMP)
	$(VENV)/bin/trainflow leaderboard

clean:
	rm -rf runs artifacts .metaflow wandb dashboard
