# The two commands: `make run` (serve the demo on 127.0.0.1:8000) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install migrate migration bench clean screenshots

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m scripts.run_demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

migrate: install
	$(BIN)/flask --app wsgi db upgrade

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) instance/*.sqlite3*

# Autogenerate a migration against a scratch database at head: make migration MESSAGE="add x"
migration: install
	$(BIN)/python -m scripts.make_migration "$(MESSAGE)"

# The console's main pages as PNG under docs/console/ (needs chromium and a CJK font:
# apt-get install chromium fonts-wqy-microhei).
screenshots: install
	$(BIN)/python -m pytest -q tests/browser/screenshots.py
