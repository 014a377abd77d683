# The two commands of the README rest on `make install`, which is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Azurite (npm), the Azure Blob server the storage tests run against
	@if command -v npm >/dev/null; then \
	  test -x $(VENV)/azurite/node_modules/.bin/azurite-blob || \
	  npm install --prefix $(VENV)/azurite --no-audit --no-fund --loglevel=error azurite@3; \
	else echo "npm not found: the Azure storage tests will be skipped"; fi
	@touch $(STAMP)

serve: install
	$(BIN)/llmos serve

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
