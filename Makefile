# Two commands do everything on a fresh machine (Python >= 3.10 and make are all it needs):
#   make demo   # builds .venv, installs hparam_joblib, runs the guide's example search end to end
#   make test   # builds .venv if needed and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo example-sklearn test test-fast lint bench-quick clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The gp sampler needs torch; this machine image ships a CPU build of 2.13.0 on disk (a bare
	# "torch" would fetch a multi-GB CUDA build). Without it the gp test is skipped, nothing else.
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || echo "torch unavailable: gp sampler test will be skipped"
	touch $@

demo: venv
	$(BIN)/python examples/your_script.py

example-sklearn: venv
	$(BIN)/python examples/sklearn_digits.py

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check hparam_joblib
	$(BIN)/mypy hparam_joblib

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench-quick: venv
	$(BIN)/python benchmarks/scaling.py --quick

clean:
	rm -rf optuna_studies .pytest_cache
