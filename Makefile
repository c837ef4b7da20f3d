# ditlab: `make demo` and `make test` work on a fresh machine with Python >= 3.10 and no torch.
#
# The install puts torch first, pinned to TORCH (the CPU build on disk here), so pip never resolves
# the package's `torch>=2.4` to a multi-GB CUDA build; on a GPU machine use e.g. `make TORCH=torch test`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install torch + ditlab (+ test tools)

demo: install  ## train a small DiT on the embedded digits, sample a 10x10 grid, grade it
	$(BIN)/ditlab demo

test: install  ## the whole test suite (CPU, a few minutes)
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
