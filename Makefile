# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_MNIST := $(abspath ../shared/data/mnist.npz)
export SHOAL_MNIST_PATH ?= $(if $(wildcard $(SHARED_MNIST)),$(SHARED_MNIST),)
# PyTorch's CPU build goes in before the [pt] extra, which then accepts it:
# PyPI's torch for Linux x86_64 is a CUDA build of several GB. TORCH_INDEX
# serves "+cpu" builds; where it cannot be reached pip moves on at once
# (--retries 0) to what else it is configured with, then PyPI.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: venv test lint typecheck pytest demo protos check-protos clean image-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --retries 0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		'torch==$(TORCH_VERSION)'
	$(PY) -m pip install -q -e '.[dev,tf,pt,track,dashboard,dp]'
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

# Build the image with no registry (debootstrap base, classic builder) and run
# the reference scenario in containers, a site killed mid-job included; needs
# root, dockerd and debootstrap. Exits 77 where no Docker engine can start.
image-test: venv
	$(PY) scripts/image_test.py $(IMAGE_TEST_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
