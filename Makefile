# Two commands on a fresh machine with Python 3.11+ (and apt for the test services):
#   make demo   create .venv, install, run the demo on the embedded broker
#   make test   create .venv, install, install Prometheus + Alertmanager, lint, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_SECONDS ?= 180
DEMO_ARGS ?=      # e.g. --containment (a flag endpoint the demo's sev1 calls)

.PHONY: demo test lint bench docs clean

$(BIN)/detector: pyproject.toml setup.py detector/core/_tally.c detector/core/_spans.c detector/core/_slots.h \
		detector/core/_finish.c detector/core/_shapes.c \
		baselines/_rate.c baselines/_quantity.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

demo: $(BIN)/detector
	$(BIN)/detector demo --duration $(DEMO_SECONDS) $(DEMO_ARGS)

lint: $(BIN)/detector
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Unit tests on both cores; the integration tests (real broker, Prometheus, Alertmanager,
# subprocess workers, bounded waits) one at a time, as they were written to run.
test: $(BIN)/detector
	bash .ci/install-services.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -m "not integration"
	$(BIN)/python -m pytest -m integration

# Runs every bench of bench/ and writes their output, dated, into docs/benchmarks.md
# (NAB=DIR NAB_PYTHON=PY to include bench/nab.py; BENCH=name to run some only; BENCH_BASE=DIR
# to time DIR's stage 2 beside this tree's in bench/stage2.py).
bench: $(BIN)/detector
	$(BIN)/python bench/report.py

# Regenerates docs/config.md from the config schema and the default file's comments.
docs: $(BIN)/detector
	$(BIN)/python -m detector.configdoc > docs/config.md.tmp && mv docs/config.md.tmp docs/config.md

clean:
	rm -rf $(VENV) build *.egg-info detector/*.so
