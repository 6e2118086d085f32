# `make demo`: create .venv, install, train the quick joint model on real Fashion-MNIST, test it.
# `make test`: same install, run the test suite.
# Data: $JOINTDIFF_DATA_ROOT if set, else ../shared/data if present, else torchvision downloads.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SHARED_DATA := $(wildcard ../shared/data)
export JOINTDIFF_DATA_ROOT ?= $(if $(SHARED_DATA),$(abspath $(SHARED_DATA)),)
export WANDB_MODE ?= offline

.PHONY: install demo test lint clean gpu-wheels

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/jointdiff fit --config configs/demo.yaml

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check jointdiff tests experiments

# wheels the GPU device machine lacks (.whl/) and Fashion-MNIST (.gpu_data/), for experiments/gpu/README.md
gpu-wheels: install
	PYTHON=$(BIN)/python bash experiments/gpu/fetch_wheels.sh

# the environment and caches only: runs/ holds results, delete it by hand
clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
