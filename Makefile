# The two commands: `make run` (serve the demo on 127.0.0.1:8000) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint install migrate migration bench bench-instructions bench-records clean screenshots

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

# $(call apt_install,COMMAND,PACKAGE,WHAT IT IS FOR): install a Debian package when COMMAND is missing and
# make runs as root with apt-get; otherwise the target goes on and the tool says what is missing.
define apt_install
	@command -v $(1) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
	  { echo "== installing $(2), $(3)"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; } || \
	    echo "!! $(2) could not be installed"; }
endef

run: install
	$(BIN)/python -m scripts.run_demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

migrate: install
	$(BIN)/flask --app wsgi db upgrade

# The load generator is wrk (Debian package): installed here when missing and running as root; without
# it bench.run falls back to its Python client and says so. make bench BENCH_ARGS="--only me --seconds 8"
bench: install
	$(call apt_install,wrk,wrk,the load generator of make bench)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The Python instructions per request of the same paths, counted by valgrind: the same figure however
# busy the machine is (compare commits with it). make bench-instructions BENCH_ARGS="--only settlement"
bench-instructions: install
	$(call apt_install,callgrind_control,valgrind,the instruction counter of make bench-instructions)
	$(BIN)/python -m bench.instructions $(BENCH_ARGS)

# Records pages at 10^4 / 10^6 / 10^7 settlement rows (long: the 10^7 load alone takes many minutes).
bench-records: install
	$(BIN)/python -m bench.records $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance/*.sqlite3*

# Autogenerate a migration against a scratch database at head: make migration MESSAGE="add x"
migration: install
	$(BIN)/python -m scripts.make_migration "$(MESSAGE)"

# Issue 14 (docs/OPERATIONS.md): backups, and a check that the deploy/ config starts and settles.
.PHONY: backup restore deploy-check
backup: install
	$(BIN)/python -m scripts.backup backup $(if $(BACKUP_DIR),--dir $(BACKUP_DIR))

# make restore BACKUP=backups/copay-20261207T020000Z [RESTORE_DATABASE_URL=…] [RESTORE_DOCUMENT_DIR=…]
restore: install
	$(BIN)/python -m scripts.backup restore "$(BACKUP)" $(if $(RESTORE_DATABASE_URL),--database-url "$(RESTORE_DATABASE_URL)") $(if $(RESTORE_DOCUMENT_DIR),--document-dir "$(RESTORE_DOCUMENT_DIR)")

# Needs PostgreSQL and Redis: TEST_DATABASE_URL (a server URL) and TEST_REDIS_URL, as for make test.
deploy-check: install
	@test -n "$(TEST_DATABASE_URL)" -a -n "$(TEST_REDIS_URL)" || { echo "deploy-check needs TEST_DATABASE_URL and TEST_REDIS_URL"; exit 2; }
	$(BIN)/python -m pytest -q -m slow -rs tests/deploy/test_deploy_check.py
# Every console page a window clerk works in, as PNG under docs/console/ (needs chromium and a CJK
# font: apt-get install chromium chromium-l10n fonts-wqy-microhei).
screenshots: install
	$(BIN)/python -m pytest -q tests/browser/screenshots.py
