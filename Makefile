# Two entry points that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data

.PHONY: install demo up test lint docs bench clean

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

# Use it now: serve the demo's model and key (data/service) with the API, the page and the
# workers, until Ctrl-C; it prints the page's address, the key file and a first request.
up: install
	CAPTIONER_DATA_DIR=$(DATA)/service $(BIN)/captioner up

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

# The docs site (mkdocs.yml) in build/site, strict: a warning (a broken link, a page missing
# from the nav) fails it. tests/test_examples.py runs the examples.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_webhooks.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) $(DATA)
