# Two commands on a fresh machine: `make demo` runs the main job, `make test`
# checks everything. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

# The main job, for now: eight days of synthetic feed logs, the 7-day window
# before the 8th day prepared into cached arrays, and the mission's Wide-ResNet
# trained on it and evaluated on the 8th day beside the Bayes-optimal AUC.
demo: $(STAMP)
	$(BIN)/likely generate --days 8 --out data/synthetic
	$(BIN)/likely prepare --config configs/synthetic.yaml --target-date 2026-11-08
	$(BIN)/likely train --config configs/synthetic.yaml --target-date 2026-11-08

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest --doctest-modules src tests

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/prepare_speed.py
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf .likely data/synthetic runs .pytest_cache .ruff_cache
