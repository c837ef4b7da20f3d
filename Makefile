# ditlab: `make demo` and `make test` work on a fresh machine with Python >= 3.10 and no torch.
#
# The install puts torch first, pinned to TORCH (the CPU build on disk here), so pip never resolves
# the package's `torch>=2.4` to a multi-GB CUDA build; on a GPU machine use e.g. `make TORCH=torch test`.

# Fashion-MNIST (the real-data tests and `ditlab demo --data fashion-mnist`) comes from Debian's package
# dataset-fashion-mnist; the install adds it with apt-get when run as root, and says how otherwise.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install fashion-mnist demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed fashion-mnist  ## create .venv and install torch + ditlab (+ test tools), Fashion-MNIST

fashion-mnist:  ## Debian's dataset-fashion-mnist; without it the tests that read it are skipped
	@if [ -f $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist (Fashion-MNIST IDX files)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "warning: apt-get could not install dataset-fashion-mnist; the Fashion-MNIST tests will be skipped"; \
	else \
	  echo "note: Fashion-MNIST is not installed ($(FASHION_MNIST) is missing): run" \
	       "'sudo apt-get install dataset-fashion-mnist'; until then the tests that need it are skipped"; \
	fi

demo: install  ## train a small DiT on the embedded digits, sample a 10x10 grid, grade it
	$(BIN)/ditlab demo

test: install  ## the whole test suite (CPU, a few minutes)
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
