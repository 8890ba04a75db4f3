# Two commands on a fresh machine with Python 3.11+ (and apt for the test services):
#   make demo   create .venv, install, run the demo on the embedded broker
#   make test   create .venv, install, install Prometheus + Alertmanager, lint, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_SECONDS ?= 180

.PHONY: demo test lint bench clean

$(BIN)/detector: pyproject.toml setup.py detector/core/_tally.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

demo: $(BIN)/detector
	$(BIN)/detector demo --duration $(DEMO_SECONDS)

lint: $(BIN)/detector
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: $(BIN)/detector
	bash .ci/install-services.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(BIN)/detector
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/alertmanager.py
	$(BIN)/python bench/stream.py

clean:
	rm -rf $(VENV) build *.egg-info detector/*.so
