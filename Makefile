# The two commands of the README are `make demo` and `make test`; `make help` lists every target.
VENV ?= .venv
PY := $(VENV)/bin/python
# What ruff checks and formats; mypy's packages are in pyproject.toml.
LINTED := apiproxy lab tests benchmarks deploy/chart_readme.py

.DEFAULT_GOAL := help
.PHONY: help demo test lint format venv system-deps clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## Make .venv with apiproxy and its test extra (again when pyproject.toml changes)

demo: venv ## Run the whole path on loopback: TLS API stub <- real Envoy gateway <- apiproxy <- client
	$(VENV)/bin/apiproxy demo

system-deps: ## Install the Debian packages and deploy tools the tests need (root; only what is missing)
	bash scripts/install-system-deps.sh
	bash deploy/install-tools.sh

lint: venv ## ruff, ruff format --check and mypy (strict)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

format: venv ## Let ruff fix what it can and format the code
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

test: venv system-deps lint ## What CI runs: install what is missing, lint, then every test but the soak
	$(VENV)/bin/pytest -m "not soak" $(PYTEST_ARGS)

clean: ## Remove .venv and the lint and test caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
