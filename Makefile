# exchange-stream — the two commands a newcomer runs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second stack on other ports (STACK_DIR, KAFKA_PORT, S3_PORT): clients follow its ports.
export KAFKA_BROKERS ?= 127.0.0.1:$(or $(KAFKA_PORT),9092)
export MINIO_ENDPOINT ?= http://127.0.0.1:$(or $(S3_PORT),9000)

.PHONY: venv stack stack-down stack-status migrate run test test-fast lint format clean

venv: $(STAMP)

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

stack: venv
	@bash scripts/stack.sh up

stack-down:
	@bash scripts/stack.sh down

stack-status:
	@bash scripts/stack.sh status

migrate: stack
	@$(BIN)/exchange-stream migrate

run: migrate
	@echo "exchange-stream: the worker runs in this terminal (Ctrl-C stops it; the services stay up)."
	@echo "exchange-stream: in another terminal, 'source .venv/bin/activate' puts the CLI on PATH."
	@$(BIN)/exchange-stream worker

test: lint stack
	@$(BIN)/pytest -q $(PYTEST_ARGS)

# The pure tests (mappings, identity, events, envelopes, contracts, parsing): no service needed.
test-fast: venv
	@$(BIN)/pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

# Style, formatting, and the import layers (pyproject.toml [tool.importlinter]).
lint: venv
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports --no-cache

format: venv
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

clean: stack-down
	rm -rf .stack
