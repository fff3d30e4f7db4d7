# Quick start: `make demo` runs the bundled demo; `make test` runs the test suite.
# Both create .venv on first use (torch 2.13.0 CPU first, then the project with dev extras).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint schemas clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet torch==2.13.0 && \
	$(BIN)/python -m pip install --quiet -e '.[dev]' && \
	echo "setup: environment installed in $$(( $$(date +%s) - start ))s"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmops validate
	$(BIN)/llmops plan; rc=$$?; test $$rc -eq 0 -o $$rc -eq 3

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check controller runners tests benchmarks
	$(BIN)/lint-imports

schemas: $(STAMP)
	$(BIN)/llmops schemas

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
