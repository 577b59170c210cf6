# Casemail: `make run` for a local instance with demo data, `make test` for the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export FLASK_APP := wsgi
export CASEMAIL_PORT ?= 5000
export REDIS_URL ?= redis://127.0.0.1:6379/0
export TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
export TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: help install run test lint format clean-instance

help:
	@echo "make run    - start Casemail with demo data at http://127.0.0.1:$(CASEMAIL_PORT)"
	@echo "make test   - install what the tests need and run the whole suite"
	@echo "make lint   - ruff and mypy"

$(STAMP): pyproject.toml
	@scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

run: export CASEMAIL_ENV ?= development
run: $(STAMP)
	@scripts/ensure-system-deps.sh run
	@scripts/ensure-redis.sh "$(REDIS_URL)"
	$(BIN)/flask db upgrade
	@echo
	@echo "================================================================"
	@echo " Casemail:      http://127.0.0.1:$(CASEMAIL_PORT)"
	@$(BIN)/flask demo seed | sed 's/^/ /'
	@echo " Mail sandbox:  SMTP 127.0.0.1:$${CASEMAIL_DEV_SMTP_PORT:-8025}, pages at /dev/mailbox"
	@echo " Stop with Ctrl-C."
	@echo "================================================================"
	@echo
	exec $(BIN)/honcho start

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP)
	@scripts/ensure-system-deps.sh test
	@scripts/ensure-redis.sh "$(TEST_REDIS_URL)"
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
