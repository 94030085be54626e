# make demo: install, then train -> export -> serve -> predict over HTTP -> load test, on the digits.
# make test: install, then run the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/digits.yaml
CHECKPOINT ?= $(shell ls -td runs/digits/*/ 2>/dev/null | head -n 1)best.pt
EXPORT_DIR ?= exports/digits
HOST ?= 127.0.0.1
PORT ?= 3000
USERS ?= 8
DURATION ?= 20
P95_MS ?= 1000

.PHONY: install demo test lint train export serve loadtest clean

install: $(STAMP)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py --config $(CONFIG) --export-dir $(EXPORT_DIR) --load-seconds $(DURATION) --p95-ms $(P95_MS)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check training serving tests scripts
	$(BIN)/ruff format --check training serving tests scripts

train: install
	$(BIN)/python -m training train --config $(CONFIG)

export: install
	$(BIN)/python -m training export --checkpoint $(CHECKPOINT) --out $(EXPORT_DIR)

serve: install
	MODEL_DIR=$(EXPORT_DIR) $(BIN)/bentoml serve serving.service:ImageClassifier --host $(HOST) --port $(PORT)

loadtest: install
	$(BIN)/python -m serving.loadtest --host http://$(HOST):$(PORT) --users $(USERS) --run-time $(DURATION) --p95-ms $(P95_MS)

clean:
	rm -rf runs exports/*/ .pytest_cache
