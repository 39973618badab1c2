# The README's two commands: `make demo` (whole pipeline on the embedded data, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean-results

$(VENV)/.installed: pyproject.toml setup.py pipeline/eval/_hamming_kernel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" hashbench dvc-vars  # dvc-bench.yaml: each bench stage's weights, from params.yaml
	PATH="$(abspath $(BIN)):$$PATH" dvc repro report@demo
	@echo "open reports/index.html"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results reports/demo reports/full reports/index.html mlruns.db mlartifacts .hashbench
