# Two entry points that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
EPOCHS ?= 30

.PHONY: install demo test lint bench clean

$(BIN)/captioner: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev]"
	touch $@

install: $(BIN)/captioner

# Generate the shapes set, train a bundle (reused when present), score it, caption a few images.
demo: install
	test -f $(DATA)/shapes/annotations/captions_val.json || \
		$(BIN)/captioner data shapes $(DATA)/shapes --n 1500
	test -f $(DATA)/bundle/config.json || \
		$(BIN)/captioner train --data $(DATA)/shapes --out $(DATA)/bundle --epochs $(EPOCHS) --patience 5
	$(BIN)/captioner eval $(DATA)/bundle --data $(DATA)/shapes
	$(BIN)/captioner caption $(DATA)/bundle --beam 3 --attention-png $(DATA)/attention \
		$$(ls $(DATA)/shapes/images/val/*.png | head -n 6)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) $(DATA)
