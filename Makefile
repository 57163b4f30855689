# The two commands of the README's quick start, and a few helpers.
VENV ?= .venv
BIN := $(VENV)/bin
THREADS ?= 2

.PHONY: setup demo test test-all clean

setup:
	@bash scripts/setup.sh

# Sets up, then runs the default sample-efficiency study on SmolLM2-135M-Instruct (<= 10 min on 2 cores).
demo: setup
	OMP_NUM_THREADS=$(THREADS) $(BIN)/steerft study --config eval/studies/quick.yaml

# Sets up, then runs the default suite: unit tests on tiny models, a few real-model and 2-process tests.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -q

# Everything, including the slow end-to-end tests.
test-all: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

clean:
	rm -rf runs wandb .pytest_cache
