# reclake: `make demo` and `make test` work on a fresh clone (they create .venv and install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,ray
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench-etl clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/reclake demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench-etl: install
	$(BIN)/python tests/benchmarks/bench_etl.py $(BENCH_ARGS)

clean:
	rm -rf lake demo-data bench-out build spark-warehouse .pytest_cache
