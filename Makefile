# The two commands in the README are `make study` and `make test`; each does all of its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

.PHONY: setup study test test-fast nbs-sync clean-venv readme

$(STAMP): requirements.txt constraints.txt setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 -c constraints.txt
	$(PIP) install -q -r requirements.txt -c constraints.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name dt2it_mrm --display-name "Python (dt2it_mrm)" >/dev/null
	touch $@

## setup: virtual environment with the pinned packages, the Jupyter kernel, DVC ready
setup: $(STAMP)
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "DVC needs a git checkout: clone the repository"; exit 1; }
	@test -d .dvc || $(BIN)/dvc init -q

## study: run the whole default study
study: setup
	$(BIN)/dvc repro

## test: library notebooks (nbdev_test) and the pytest suite
test: setup
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q -n 2 tests

## readme: copy the claims and arms tables of reports/results.md into the README's results block
readme:
	$(BIN)/python -c "from dt2it_mrm.report import update_readme; update_readme('README.md', 'reports/results.md')"

clean-venv:
	rm -rf $(VENV)
