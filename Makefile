# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every pip call goes through this constraints file, so torch 2.14.1 + torchvision 0.29.1 (the
# pair that imports together here; see docs/stack.md) are never swapped for a newer build by a
# dependency asking for plain `torch`.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-all bench peers lint format venv data docs wheel-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1

$(STAMP): $(BIN)/python pyproject.toml constraints.txt requirements-lock.txt
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

data: $(STAMP)
	$(BIN)/salign data fetch all

demo: $(STAMP)
	$(BIN)/salign data fetch mnist
	$(BIN)/salign demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# adv-lib, the most efficient peer of the attack benchmarks, is not in requirements-lock.txt: its
# dependency visdom builds from an sdist that needs setuptools < 70 (a build constraint; the
# runtime constraints above still hold torch and torchvision).
PEERS_STAMP := $(VENV)/.installed-peers
$(PEERS_STAMP): $(STAMP)
	printf 'setuptools<70\n' > $(VENV)/build-constraints.txt
	$(BIN)/pip install -q --build-constraint $(VENV)/build-constraints.txt adv-lib==0.2.8 visdom==0.2.4 tornado==6.6.1 jsonpatch==1.48
	@touch $@

peers: $(PEERS_STAMP)

bench: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python benchmarks/run_all.py

# The documentation site with the API reference from the docstrings (mkdocs.yml); warnings
# (a broken link, a docstring that names a parameter the function does not have) are errors.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# Build the sdist and wheel, install only the wheel into a clean venv (torch 2.13.0, its own
# constraints file) and use it from outside the repository (needs MNIST: `make data`).
wheel-check: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/wheel_check.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache
