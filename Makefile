# ssmkit: `make demo` sets up and runs the main job; `make test` sets up and runs ruff + the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-full clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e ".[dev,graphs]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: train S-Mamba on the bundled ETTh1 (horizon 96, official hyper-parameters, seed 2023) on the CPU,
# test the best checkpoint on all test windows and print MSE / MAE beside the paper's (about 6 min on one core).
demo: setup
	OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(BIN)/ssmkit timeseries evaluate \
		-c configs/timeseries/s_mamba/ETTh1_96.yaml --seeds 2023 --out runs/demo/s_mamba_ETTh1_96

lint: setup
	$(BIN)/ruff check ssmkit tests benchmarks

test: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -x --durations=15

bench: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/kernels.py --device cpu --quick

bench-full: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/kernels.py --device cpu

clean:
	rm -rf $(VENV) .pytest_cache
