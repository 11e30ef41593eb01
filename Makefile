# The two commands of the quick start are `make demo` and `make test`;
# each installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-data
SAMPLE_COUNT ?= 200

.PHONY: install demo examples test lint typecheck unit bench clean browser docs dist soak

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: install
	@test -d $(DEMO_DIR)/collection || $(BIN)/jobtrack sample $(DEMO_DIR)/collection --count $(SAMPLE_COUNT)
	$(BIN)/jobtrack scan $(DEMO_DIR)/collection --data-dir $(DEMO_DIR)/state
	@echo "Thumbnails and cache copies are under $(DEMO_DIR)/state/renditions/;"
	@echo "list the job with: $(BIN)/jobtrack jobs list --data-dir $(DEMO_DIR)/state"

# The CSV import example on the embedded default, its store beside the demo's.
examples: install
	JOBTRACK_DATA_DIR=$(DEMO_DIR)/state $(BIN)/python examples/csv_import.py examples/payments.csv --output $(DEMO_DIR)/payments.db

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck browser docs
	$(BIN)/pytest

# The documentation site (mkdocs.yml): every warning is an error, so a broken
# link or a docstring mkdocstrings cannot read fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The sdist and the wheel, into dist/ (tests/packaging installs the wheel
# into clean environments).
dist: install
	rm -rf dist
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m build --outdir dist .

# The dashboard's browser test drives Debian's chromium (Playwright cannot
# download its own browser here); installed when missing, as root.
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium for the browser test"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
			|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
		else \
			echo "no chromium and not root: the browser test will be skipped"; \
		fi; \
	}

unit: install
	$(BIN)/pytest tests/unit tests/contract

# `make bench SCALE=1` adds the scale variant (50,000 and 100,000 jobs at once,
# the fallback cycle over 1,000,000 jobs): minutes of a PostgreSQL server's time,
# into bench/results/scale/. Benchmarks are not tests: CI runs none of them.
SCALE ?=

bench: install
	$(BIN)/python -m bench
	$(BIN)/python -m bench.ledger
	$(BIN)/python -m bench.integrations
	$(BIN)/python -m bench.dashboard
	$(if $(SCALE),$(BIN)/python -m bench.monitor --scale)

# The chaos soak (tests/soak): a private PostgreSQL server and RabbitMQ node,
# real workers, monitor and server under a seeded schedule of faults for
# SOAK_MINUTES; its report goes to bench/results/soak/ (soak.json, soak.md).
# SOAK_CLUSTER=1: a private cluster of three RabbitMQ nodes, and a node lost.
SOAK_MINUTES ?= 10
SOAK_SEED ?= 1
SOAK_CLUSTER ?= 0
soak: install
	$(BIN)/python -m tests.soak.run --minutes $(SOAK_MINUTES) --seed $(SOAK_SEED) \
		$(if $(filter 1,$(SOAK_CLUSTER)),--cluster,) --out bench/results/soak

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache test-artifacts build dist
