# Two commands on a fresh machine: `make demo` runs the main job, `make test`
# checks everything. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

# The main job: eight days of synthetic feed logs (a small version, so that
# it runs in minutes), then the mission's models compared on the week before
# the 8th day with three seeds each, the claims tested, and the report
# written; last, the two-tower recall run the feed service needs.
# `likely generate --days 8` alone makes the full-size logs.
DEMO_REPORT := reports/demo
DEMO_RANKING := $(DEMO_REPORT)/runs/wide_resnet/seed-0
DEMO_RECALL := runs/demo-recall
demo: $(STAMP)
	$(BIN)/likely generate --days 8 --rows-per-day 60000 --out data/synthetic
	rm -rf $(DEMO_REPORT) $(DEMO_RECALL)
	$(BIN)/likely compare --config configs/synthetic.yaml --target-date 2026-11-08 \
		--seeds 3 --incremental-days 1 --out $(DEMO_REPORT)
	$(BIN)/likely recall train --config configs/synthetic.yaml --target-date 2026-11-08 \
		--run $(DEMO_RECALL)
	@echo
	@echo "Serve the feed (Wide-ResNet, seed 0, behind two-tower recall):"
	@echo "  make serve    # = $(BIN)/likely serve --run $(DEMO_RANKING) --recall $(DEMO_RECALL)"
	@echo "then open http://127.0.0.1:8000/ or: curl -s localhost:8000/recommend \\"
	@echo "  -H 'content-type: application/json' -d '{\"user_id\": 7, \"k\": 5}'"

# The feed service on the demo's runs (after `make demo`); LIKELY_TOKEN sets
# the write token, else one is made up and printed.
serve: $(STAMP)
	$(BIN)/likely serve --run $(DEMO_RANKING) --recall $(DEMO_RECALL)

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
	rm -rf .likely data/synthetic data/serve runs .pytest_cache .ruff_cache
