# The two commands a newcomer needs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The suite runs once on SQLite and, when this PostgreSQL answers, once more on it.
# `make run PORT=8080` when 8000 is taken.
PORT ?= 8000
PG_URL ?= postgres://postgres:postgres@127.0.0.1:5432/mailportal
PYTEST_ARGS ?=

.PHONY: run test test-fast lint messages makemessages install install-dev lock clean

# Both installs take exact versions with their hashes from requirements/*.lock (`make lock`
# writes them from pyproject.toml); the project itself is then installed without dependencies.
$(VENV)/.runtime: requirements/runtime.lock
	@$(PYTHON) -m venv $(VENV) || { echo >&2 "Could not create a virtualenv: on Debian run 'apt-get install python3-venv'."; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/runtime.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.lock
	$(BIN)/pip install -q --require-hashes -r requirements/dev.lock
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# .mo files are build output, never committed; polib compiles them without GNU gettext.
messages: $(VENV)/.runtime
	$(PY) scripts/compile_messages.py

# Developers only (needs GNU gettext): refresh the .po files from the source.
makemessages: $(VENV)/.runtime
	DEBUG=1 $(PY) manage.py makemessages --no-obsolete --no-location -l lv -l en -l ru -l lt -l et -i '.venv/*' -i 'var/*'

run: install messages
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	@echo "Open http://127.0.0.1:$(PORT)/ and sign in with a mailbox above."
	DEBUG=1 PORTAL_URL=$${PORTAL_URL:-http://127.0.0.1:$(PORT)} $(PY) manage.py runserver 127.0.0.1:$(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/mypy common accounts audit mailaccess mailportal tests
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
	DEBUG=1 $(PY) manage.py check

test: install-dev messages lint
	@echo "== tests on SQLite (the embedded default) =="
	env -u DATABASE_URL $(BIN)/pytest -m "not postgres" $(PYTEST_ARGS)
	@if $(PY) scripts/pg_available.py "$(PG_URL)"; then \
		echo "== tests on PostgreSQL ($(PG_URL)) =="; \
		DATABASE_URL="$(PG_URL)" $(BIN)/pytest $(PYTEST_ARGS); \
	elif [ "$$REQUIRE_E2E" = "1" ]; then \
		echo >&2 "REQUIRE_E2E=1 but PostgreSQL at $(PG_URL) does not answer."; exit 1; \
	else \
		echo; echo "!!! SKIPPED: PostgreSQL at $(PG_URL) does not answer: the PostgreSQL-only and"; \
		echo "!!! end-to-end tests (Dovecot, Postfix, Celery, Chromium) did NOT run. '.ci/run' runs them."; \
	fi

# While working: the suite on SQLite without the end-to-end tests (marked e2e: real Dovecot,
# Postfix, Redis, Celery, Chromium, server processes) and without lint. `make test` stays the
# full check.
test-fast: install-dev messages
	env -u DATABASE_URL $(BIN)/pytest -m "not postgres and not e2e" $(PYTEST_ARGS)

# Developers only, after changing dependencies in pyproject.toml: pin them (and what they need)
# again. pip-tools runs from a virtualenv of its own, so it never enters the project's.
LOCK := .venv-lock/bin/pip-compile -q --no-emit-index-url --no-emit-find-links --generate-hashes --allow-unsafe --strip-extras
lock:
	@test -x .venv-lock/bin/pip-compile || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools; }
	$(LOCK) -o requirements/runtime.lock pyproject.toml requirements/build.in
	$(LOCK) --extra dev -o requirements/dev.lock pyproject.toml requirements/build.in

clean:
	rm -rf $(VENV) var staticfiles
	find locale -name '*.mo' -delete
