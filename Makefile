# r1lab: `make demo` and `make test` work on a fresh machine (they create .venv and install into it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first, pinned: on a CPU machine that has this wheel locally, pip takes it and never pulls a
# multi-GB CUDA build; on a GPU machine pip gets PyPI's normal (CUDA) build of the same version.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-dev demo demo-r1 demo-r1-zero demo-aha test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,math,hf]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The full R1 pipeline on the embedded tiny model (R1-Zero one of its stages) and the aha moment, side by side on
# the CPU cores, with one report over both in runs/tiny_demo (README: measured time).
demo: $(VENV)/.installed
	$(VENV)/bin/r1lab run recipes/tiny/r1.yaml recipes/tiny/aha.yaml --report runs/tiny_demo

demo-r1: $(VENV)/.installed
	$(VENV)/bin/r1lab run recipes/tiny/r1.yaml

demo-r1-zero: $(VENV)/.installed
	$(VENV)/bin/r1lab run recipes/tiny/r1_zero.yaml

demo-aha: $(VENV)/.installed
	$(VENV)/bin/r1lab run recipes/tiny/aha.yaml

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q --durations=15

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
