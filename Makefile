# Every target bootstraps its own virtual environment so a fresh clone needs nothing by hand.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= test

CHROMIUM := /usr/bin/chromium

.PHONY: run test lint typecheck pytest soak bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m storekeeper.tour

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests benchmarks
	$(BIN)/ruff format --no-cache --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The web page's tests drive Debian's Chromium through Playwright (never `playwright install`).
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y chromium || (apt-get update && apt-get install -y chromium); \
	else \
		echo "The web page tests need Chromium at $(CHROMIUM): run 'sudo apt-get install -y chromium'" >&2; \
	fi

pytest: $(STAMP) browser
	$(BIN)/pytest -q -p no:cacheprovider -m "not soak"

test: lint typecheck pytest

soak: $(STAMP)
	STOREKEEPER_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider -m "soak or crash"

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
