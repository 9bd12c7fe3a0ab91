# Set-up is part of every target: a fresh machine needs only `make run` or
# `make test`. Both install exactly requirements.lock into a fresh .venv, which
# is rebuilt whenever the lock or the project's requirements change; Tailor
# itself is installed into it again (editable) whenever pyproject.toml changes.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
EDITABLE := $(VENV)/.editable
LOG_DIR := var/log
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# What `make check` leaves out: the tests that start servers, browsers, Ray or
# train models (pytest markers, declared in pyproject.toml).
SLOW_TESTS := slow or e2e or browser or ray

.PHONY: run test check models browser chart lint typecheck install lock-check lock lock-upgrade clean

# Without TAILOR_ADMIN_KEY the admin API and dashboard are closed; `make run`
# keeps a random key of its own in var/admin-key (owner-only) instead.
ADMIN_KEY_FILE := var/admin-key

run: models
	@test -n "$$TAILOR_ADMIN_KEY" || test -s $(ADMIN_KEY_FILE) || \
		(umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32))" > $(ADMIN_KEY_FILE))
	@TAILOR_ADMIN_KEY_FILE="$${TAILOR_ADMIN_KEY_FILE:-$(ADMIN_KEY_FILE)}" $(BIN)/tailor serve --quiet

# The whole suite on both cores, a module at a time per worker (`loadfile`): a
# module's costly fixtures (servers, models, Chromium, Ray) are built once, and
# only one module starts Ray. `loadgroup` would not do: with pytest 9.2 it groups
# nothing (pytest-xdist issue 1386). tests/conftest.py orders the heavy modules
# first and gives each worker its share of the cores.
test:
	@# The set-up steps side by side: the model store's conversion and the
	@# linters each keep one core busy for a minute or more.
	@$(MAKE) --no-print-directory -j2 models browser lint typecheck
	TAILOR_TEST_MODEL_STORE=$(CURDIR)/var/models $(BIN)/pytest -n 2 --dist loadfile \
		--no-loadscope-reorder --durations=25

# The fast loop: lint, types and the tests that need no server, browser or
# training, on both cores (pytest-xdist; under a minute once the models are prepared).
check: models lint typecheck
	TAILOR_TEST_MODEL_STORE=$(CURDIR)/var/models $(BIN)/pytest -q -n 2 -m "not ($(SLOW_TESTS))" \
		--durations=5

# The lock is checked against pyproject.toml at every run (a stale lock stops
# here with what to do); the venv is rebuilt when the lock changes.
install: lock-check $(INSTALLED) $(EDITABLE)

lock-check:
	@$(PYTHON) tools/lock.py check

# pip's own chatter goes to a log; a failure shows its tail. --no-compile: the
# packages' bytecode is written as their modules are first imported, not all at
# install (a quarter of the install's time, mostly for modules never imported).
$(INSTALLED): requirements.lock | lock-check
	@mkdir -p $(LOG_DIR)
	@echo "tailor: installing requirements.lock into a fresh $(VENV) (log: $(LOG_DIR)/install.log)"
	@rm -rf $(VENV)
	@{ $(PYTHON) -m venv $(VENV) \
		&& $(BIN)/pip install --no-deps --no-compile --require-hashes -r requirements.lock ; \
	} > $(LOG_DIR)/install.log 2>&1 \
		|| { tail -n 30 $(LOG_DIR)/install.log >&2; echo "tailor: install failed (log: $(LOG_DIR)/install.log)" >&2; exit 1; }
	@touch $@

# Tailor itself, editable. An editable install maps each top-level package by
# name when it is installed, so a package added to pyproject.toml (e.g. `models`)
# is found only once this runs again; it takes seconds, not a rebuild.
$(EDITABLE): pyproject.toml $(INSTALLED)
	@mkdir -p $(LOG_DIR)
	@$(BIN)/pip install --no-deps --no-build-isolation --no-index -e . >> $(LOG_DIR)/install.log 2>&1 \
		|| { tail -n 30 $(LOG_DIR)/install.log >&2; echo "tailor: install failed (log: $(LOG_DIR)/install.log)" >&2; exit 1; }
	@touch $@

models: install
	@$(BIN)/tailor models prepare --quiet

# Refresh the lock on purpose, in its own commit, then run the whole suite.
# `make lock` keeps every pin that still fits pyproject.toml; `make lock-upgrade`
# takes the newest releases the ranges allow.
LOCK_TOOLS := var/lock-tools
PIP_TOOLS := pip-tools==7.7.0
$(LOCK_TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/pip install --quiet $(PIP_TOOLS)

lock: $(LOCK_TOOLS)/bin/pip-compile
	$(PYTHON) tools/lock.py refresh --pip-compile $(LOCK_TOOLS)/bin/pip-compile

lock-upgrade: $(LOCK_TOOLS)/bin/pip-compile
	$(PYTHON) tools/lock.py refresh --upgrade --pip-compile $(LOCK_TOOLS)/bin/pip-compile

# The dashboard's browser tests drive Debian's Chromium through Playwright;
# Playwright's own browser download cannot work offline.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { mkdir -p $(LOG_DIR) \
		&& echo "tailor: installing Debian's chromium for the browser tests (log: $(LOG_DIR)/chromium.log)" \
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium); \
		} > $(LOG_DIR)/chromium.log 2>&1; } \
		|| (echo "the dashboard tests need Debian's chromium at $(CHROMIUM) (log: $(LOG_DIR)/chromium.log)" >&2; exit 1)

# After changing serving/ray_serve.py: the chart's copy of the fixed Serve config
# (the tests fail until it is rewritten).
chart: install
	$(BIN)/python -m serving.helm_chart

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	@# The dashboard's scripts are ES modules, served as they are: a syntax error would only show in a browser.
	@for f in serving/dashboard/static/*.js serving/dashboard/static/pages/*.js; do \
		node --input-type=module --check < $$f || { echo "syntax error in $$f" >&2; exit 1; }; done

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var test-output
