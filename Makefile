# Two entry points: `make run` (set-up + default study) and `make test` (set-up + fast tests).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,wandb
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: run test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mergelab demo

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check mergelab tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
