# peelscan: two commands do everything on a fresh machine with python3 (3.11+) and make.
#   make demo   creates .venv, installs, writes synthetic lots, runs the asset graph, prints the report
#   make test   creates the same environment and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PEELSCAN_HOME ?= $(CURDIR)/var
export DAGSTER_HOME ?= $(PEELSCAN_HOME)/dagster
# reference implementations for tests and benchmarks only: piq's __init__ needs torchvision,
# which breaks beside the CPU torch, so it is installed without its dependencies
PIQ := piq==0.8.0 image-similarity-measures==0.3.6

.PHONY: venv demo test ui bench clean audit

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps $(PIQ)
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/peelscan demo

test: $(STAMP)
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m pytest -q -p no:cacheprovider

ui: $(STAMP)
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# make bench                         every benchmark (about an hour on 2 cores)
# make bench BENCH="throughput study"  only those (names of benchmarks/*.py)
bench: $(STAMP)
	@mkdir -p bench-out
	$(BIN)/python benchmarks/run_all.py $(BENCH)

audit: $(STAMP)
	$(BIN)/pip install -q pip-audit
	$(BIN)/pip-audit --skip-editable || true

clean:
	rm -rf $(VENV) var bench-out
