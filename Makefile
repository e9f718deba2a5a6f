# The README's commands. Each target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all demo ui bench lint typecheck clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "recsys needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ''

demo: $(STAMP)
	$(BIN)/recsys demo $(if $(DATA),--data $(DATA),)

ui: $(STAMP)
	$(BIN)/recsys ui --port $(or $(PORT),8080)

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/quality.py --dataset ml-100k
	$(BIN)/python benchmarks/quality.py --dataset amazon-toys --models pop,sasrec,gru4rec,caser
	$(BIN)/python benchmarks/serve.py --home benchmarks/.homes/amazon-toys
	$(BIN)/python benchmarks/batch.py --home benchmarks/.homes/amazon-toys
	$(BIN)/python benchmarks/quality.py --dataset amazon-toys --models ease --tag ease-search
	$(BIN)/python benchmarks/ease_linalg.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/reliability.py
	$(BIN)/python benchmarks/peers.py --dataset ml-100k --budget-seconds 600
	$(BIN)/python benchmarks/peers.py --dataset amazon-toys --budget-seconds 900

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .recsys .pytest_cache .mypy_cache .ruff_cache
