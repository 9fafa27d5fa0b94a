# Two commands do everything on a fresh machine (Python >= 3.10 and make are all it needs):
#   make demo   # builds .venv, installs hparam_joblib, runs the guide's example search end to end
#   make test   # builds .venv if needed and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The extras the venv gets (dev: everything the tests and benchmarks use).
EXTRAS ?= dev
# Test files run this many at a time (pytest-xdist; one file stays on one process, so a module's
# fixtures run once). On 2 cores, 2 took the suite from ~26 to 15 min; 3 was slower than 2.
TEST_WORKERS ?= 2

.PHONY: venv demo example-sklearn test test-fast lint bench-quick clean optuna-storage-tests test-latest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	# The gp sampler needs torch; this machine image ships a CPU build of 2.13.0 on disk (a bare
	# "torch" would fetch a multi-GB CUDA build). Without it the gp test is skipped, nothing else.
	# NO_TORCH=1 (the extra-Python CI runs): no torch; the gp test is skipped then.
	[ -n "$(NO_TORCH)" ] || $(BIN)/python -m pip install --quiet "torch==2.13.0" || echo "torch unavailable: gp sampler test will be skipped"
	touch $@

demo: venv
	$(BIN)/python examples/your_script.py

example-sklearn: venv
	$(BIN)/python examples/sklearn_digits.py

test: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) optuna-storage-tests

# Optuna's own tests/storages_tests (from the sdist of the installed Optuna, cached outside the
# repository) on our storages; the plugin and the expected deviations: tests/optuna_suite/.
# Its heartbeat tests mostly sleep, so 4 at a time.
optuna-storage-tests: venv
	$(BIN)/python tests/optuna_suite/run.py -q -n 4

# The budget races, kill tests, upgrade guard and Optuna's storage tests on the newest Optuna,
# SQLAlchemy, loky and joblib (past our pins), in a venv of their own (.venv-latest), so an
# upgrade's breakage shows before users see it (scripts/test_latest.sh; .ci/run calls it).
test-latest:
	PYTHON=$(PYTHON) bash scripts/test_latest.sh

lint: venv
	$(BIN)/ruff check hparam_joblib tests benchmarks
	$(BIN)/mypy hparam_joblib

test-fast: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

bench-quick: venv
	$(BIN)/python benchmarks/scaling.py --quick

clean:
	rm -rf optuna_studies .pytest_cache
