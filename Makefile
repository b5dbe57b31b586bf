# WaFL developer entry points. `make test` sets everything up on a fresh machine, then tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup build test unit integration lint docs simulate bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# promtool (Debian's prometheus package) checks the alert rules and dashboard queries.
$(VENV)/.promtool:
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null)
	touch $@

# RabbitMQ's own Prometheus endpoint (:15692), which the dashboards' queue panels read; the
# compose stack enables the same plugin.
$(VENV)/.rabbitmq-prometheus: | $(BIN)/python
	rabbitmq-plugins enable --quiet rabbitmq_prometheus
	touch $@

# Circuits (compile, r1cs), this machine's development keys (OS entropy) and contracts, cached.
build: $(VENV)/.installed node_modules/.installed $(VENV)/.promtool $(VENV)/.rabbitmq-prometheus
	$(BIN)/wafl build

setup: build

# Both halves: tests/unit (no servers, no circuit builds) and tests/integration (real RabbitMQ,
# Redis, anvil, ZoKrates, snarkjs, solc).
test: setup
	$(BIN)/pytest -q

unit: $(VENV)/.installed node_modules/.installed $(VENV)/.promtool
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

lint: $(VENV)/.installed
	$(BIN)/ruff check wafl services tools tests deploy
	$(BIN)/mypy

# AsyncAPI documents of every service, rendered by FastStream (tests/test_asyncapi_docs.py checks them).
docs: $(VENV)/.installed
	mkdir -p docs/asyncapi
	for s in $$($(BIN)/python -c 'from services import SERVICE_NAMES; print(*SERVICE_NAMES)'); do $(BIN)/faststream docs gen --factory services.$$s.app:create_app --yaml --out docs/asyncapi/$$s.yaml || exit 1; done

simulate: setup
	$(BIN)/wafl simulate

bench: setup
	$(BIN)/wafl bench gas --json

clean:
	rm -rf build .pytest_cache
