# The two commands of the README, plus the steps they are made of.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install lint model clean

run: install  ## start Triton (CPU) + the gateway on the embedded defaults
	$(BIN)/localmoe up

test: install  ## the whole test suite against real Triton, gateway and Redis
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build of 2.13.0 is what the CPU profile uses.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev,fallback,bench]"
	touch $@

model: install  ## build the tiny MoE checkpoint (localmoe up does this when missing)
	$(BIN)/localmoe build tiny

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
