# fluxsr: the two commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned exactly: any open range makes pip pull a multi-GB CUDA build (docs/install.md).
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/fluxsr demo --out outputs/demo

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) outputs
