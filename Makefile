# The handbook's commands. `make reproduce` runs every notebook's documented configuration;
# `make test` runs the unit tests and every notebook in its small (smoke) configuration.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The offline copies of the data sets, beside the repository on machines that have them;
# elsewhere the data module downloads the originals.
ifneq ($(wildcard ../shared/data),)
export COCS_ARCHIVES ?= $(abspath ../shared/data)
endif

NOTEBOOKS := $(sort $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.py))))
LIBRARY := $(wildcard cocs/*.py cocs/*.yaml)
BUILD := build/notebooks
SMOKE_RESULTS := build/smoke-results

# JupyterLab settings that apply only to the JupyterLab of this environment.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/cocs.json

.PHONY: help install test lint bench gpu-check reproduce smoke book lab clean distclean
.DEFAULT_GOAL := help

help:
	@echo "make install    create .venv with the pinned dependencies (a no-op when up to date)"
	@echo "make reproduce  run every notebook with its default parameters, writing results/"
	@echo "make test       unit tests, then every notebook with its smoke parameters"
	@echo "make smoke      run every notebook with its smoke parameters into $(SMOKE_RESULTS)/"
	@echo "make book       the web site of the executed notebooks, in build/book/ (trains nothing)"
	@echo "make lab        JupyterLab on this folder; notebooks/*.py open as notebooks"
	@echo "make bench      speed and memory of a training step (writes results/bench/)"
	@echo "make gpu-check  the GPU tests, and the full profile's hours on this GPU (results/gpu/)"
	@echo "make lint       ruff on cocs, tests and notebooks"
	@echo "make clean      remove build/ and caches (distclean also removes .venv)"

# The stamp is newer than pyproject.toml once the environment matches it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev,book]'
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check cocs tests notebooks

bench: install
	$(PY) -m cocs.bench

gpu-check: install
	$(PY) -m pytest -q tests/test_cuda.py
	$(PY) -m cocs.gpucheck

# An executed notebook depends on its source and on the library, so only stale ones run again.
# The environment is an order-only prerequisite: building it does not make notebooks stale.
# A chapter that reads another chapter's results also depends on that chapter (below).
$(BUILD)/default/%.ipynb: notebooks/%.py $(LIBRARY) | $(STAMP)
	$(PY) -m cocs.handbook run $* --profile default --output $@

$(BUILD)/smoke/%.ipynb: notebooks/%.py notebooks/profiles.yaml $(LIBRARY) | $(STAMP)
	$(PY) -m cocs.handbook run $* --profile smoke --results-dir $(SMOKE_RESULTS) --output $@

# Chapter 7 draws the models that chapters 4 and 5 trained; chapter 8 tabulates every chapter.
DRAWN := 04_cifar10 05_imagenette
TABULATED := $(filter-out 10_results,$(NOTEBOOKS))
$(BUILD)/default/07_cluster_maps.ipynb: $(foreach n,$(DRAWN),$(BUILD)/default/$(n).ipynb)
$(BUILD)/smoke/07_cluster_maps.ipynb: $(foreach n,$(DRAWN),$(BUILD)/smoke/$(n).ipynb)
$(BUILD)/default/10_results.ipynb: $(foreach n,$(TABULATED),$(BUILD)/default/$(n).ipynb)
$(BUILD)/smoke/10_results.ipynb: $(foreach n,$(TABULATED),$(BUILD)/smoke/$(n).ipynb)

# The plan (stale chapters, their recorded times, the total) first, then one line per chapter.
reproduce: install
	$(PY) -m cocs.reproduce

smoke: $(foreach n,$(NOTEBOOKS),$(BUILD)/smoke/$(n).ipynb)

# The site shows, per chapter, its default run when there is one, else its book run (the
# committed finished runs, loaded instead of trained: `python -m cocs.book --prepare`), else
# its smoke run. Runs that exist and are up to date are not executed again.
UNRUN := $(foreach n,$(NOTEBOOKS),$(if $(wildcard $(BUILD)/default/$(n).ipynb $(BUILD)/book/$(n).ipynb $(BUILD)/smoke/$(n).ipynb),,$(n)))
book: install
	$(PY) -m cocs.book --prepare
	$(if $(UNRUN),$(MAKE) smoke)
	$(PY) -m cocs.book

# Double-clicking a .py file opens it as a notebook (jupytext's "Jupytext Notebook" viewer);
# right-click, Open With > Editor, edits it as text.
$(LAB_SETTINGS): | $(STAMP)
	mkdir -p $(dir $@)
	printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' > $@

# LAB_ARGS passes options to JupyterLab, e.g. LAB_ARGS="--no-browser --port=8899".
lab: install $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) cocs.egg-info
