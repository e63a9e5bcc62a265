# The two set-up commands on a fresh machine are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
SLURM := /usr/sbin/slurmctld
# pip compiles the bytecode on one core; this uses them all (10 s less of a 35-s install on 2
# cores). A file that cannot compile (torch ships Python 3.12 syntax in its tests) is left to the
# interpreter, as pip leaves it, hence the `|| true`.
COMPILE := $(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true

.PHONY: install install-dev demo test test-fast lint format docs clean

# What the demo needs; `install-dev` adds the test and lint tools.
install: $(STAMP) $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz

install-dev: install $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile torch==2.13.0 -e .
	$(COMPILE)
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(COMPILE)
	touch $(DEV_STAMP)

# Debian's dataset-fashion-mnist package; installed when we are root and the files are missing.
$(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz:
	@if [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist'" >&2; exit 1; \
	fi

demo: install
	$(BIN)/advprune demo

# Debian's Slurm and munge, for the single-node cluster of tests/test_slurm_executor.py
# (tests/slurm_cluster.py); installed when we are root and online, else those tests skip and say why.
$(SLURM):
	@if [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq slurm-wlm munge || (apt-get update -qq && apt-get install -y -qq slurm-wlm munge)) \
		|| echo "slurm-wlm and munge could not be installed: the Slurm tests will skip" >&2; \
	else \
		echo "not root: the Slurm tests will skip ('sudo apt-get install -y slurm-wlm munge')" >&2; \
	fi

# One test process per core (pytest-xdist): each test runs on one torch thread (tests/conftest.py).
test: install-dev $(SLURM)
	$(BIN)/pytest -q -n auto

test-fast: install-dev
	$(BIN)/pytest -q -n auto -m "not slow"

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install-dev
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# The documentation site, into site/ (not committed); --strict fails on a broken link or page.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
