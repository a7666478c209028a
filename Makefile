# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_MNIST := $(abspath ../shared/data/mnist.npz)
export SHOAL_MNIST_PATH ?= $(if $(wildcard $(SHARED_MNIST)),$(SHARED_MNIST),)

.PHONY: venv test lint typecheck pytest demo protos check-protos clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,tf]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check src tests bench examples scripts
	$(VENV)/bin/ruff format --check src tests bench examples scripts

typecheck: venv
	$(VENV)/bin/mypy

check-protos: venv
	$(PY) scripts/gen_protos.py --check

protos: venv
	$(PY) scripts/gen_protos.py

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck check-protos pytest

demo: venv
	$(PY) -m shoal.cli.app demo

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
