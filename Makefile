# The two commands of the README, the quicker test tiers for the inner loop, and their steps.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.PHONY: help run test test-fast test-quick install tools lint model dashboards dashboards-png clean

run: install  ## start Triton (CPU) + the gateway on the embedded defaults
	$(BIN)/localmoe up

test: install tools model  ## ruff, then every test: real Triton, gateway and Redis (what CI runs)
	$(BIN)/ruff check .
	$(PYTEST) -ra

test-fast: install  ## the unit tier only: nothing started, about 15 s
	$(PYTEST) -q tests/unit

test-quick: install tools model  ## everything not marked slow (no wheel build, benchmark or model training)
	$(PYTEST) -q -ra -m "not slow"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build of 2.13.0 is what the CPU profile uses.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev,bench]"
	touch $@

tools: .tools/.installed  ## helm, kubectl, prometheus, promtool into .tools/bin (the operate checks)

.tools/.installed: build/tools/install.sh
	build/tools/install.sh
	touch $@

dashboards: install  ## regenerate the Grafana dashboards and alert rules from build/monitoring
	PYTHONPATH=build $(BIN)/python -m monitoring generate
	PYTHONPATH=build $(BIN)/python -m monitoring.rules

dashboards-png: install tools  ## docs/img/dashboard-*.png from a real Prometheus over the live stack (~1 min)
	PYTHONPATH=build $(BIN)/python -m monitoring render

model: install  ## build the tiny MoE checkpoint (localmoe up does this when missing)
	$(BIN)/localmoe build tiny

lint: install  ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache

help:  ## list these targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
