# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create .venv on first use. On a machine without torch, the CPU wheel torch==2.13.0 is installed first;
# a GPU user who already has a CUDA build of torch (2.11–2.13) in the active environment keeps it (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export DVC_NO_ANALYTICS = 1

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

.PHONY: install run test test-slow lint gpu-wheels
install: $(STAMP)

run: $(STAMP)
	$(BIN)/python src/run.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The wheels bench/gpu_check.sh installs on the GPU machine (carry bench/wheels there): pytest for Python 3.12.
gpu-wheels: $(STAMP)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d bench/wheels -r bench/wheels.txt
	du -sh bench/wheels
