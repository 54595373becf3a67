# Two entry points that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data

.PHONY: install demo test lint bench clean

$(BIN)/captioner: pyproject.toml client/pyproject.toml dev/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev]" -e ./client -e ./dev
	touch $@

install: $(BIN)/captioner

# The whole job with no servers: start the API and workers, train a model through the API,
# start the pipeline (embedded mode), caption new images through the HTTP API.
demo: install
	$(BIN)/captioner demo --data $(DATA)

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_webhooks.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) $(DATA)
