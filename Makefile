# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ required).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data/food101_10
OUT    ?= runs/demo
# TORCH_INDEX=https://download.pytorch.org/whl/cpu: PyTorch's CPU-only wheels, without the CUDA libraries
TORCH_INDEX ?=

.PHONY: install demo test test-slow clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: a looser request may pull a multi-GB build
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# the most accurate model within 100,000 bytes for the data, planned to end in 8 minutes (auto)
demo: install
	$(BIN)/netcompress auto $(DATA) --target-bytes 100000 --time 8m --out $(OUT)

# the default suite, a worker per usable core (2.5 minutes on 2 idle cores); test-slow adds real training,
# killed runs, torchrun, the deployment exports and the examples, one at a time (they time and kill processes)
test: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(shell nproc)

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
