#!/usr/bin/env bash
# The budget races, the kill tests, the upgrade guard and Optuna's own storage tests on the NEWEST
# Optuna, SQLAlchemy, loky and joblib the registry offers (not our pins), in a venv of their own
# (.venv-latest): a release that breaks our internals shows here before users install it.
# `make test-latest`; .ci/run calls it. HPARAM_JOBLIB_ALLOW_UNTESTED=1 lets a release outside the
# tested range (hparam_joblib/_tested.py) run, so these tests, not the refusal, decide.
# A failure ends with one line naming the versions and the step that broke.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LATEST_VENV:-.venv-latest}
PY="$VENV/bin/python"
test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip
# psycopg2: the tests' own server helper (tests/_pgserver.py) uses it; the search uses psycopg 3.
"$PY" -m pip install --quiet -e ".[test,postgresql]" psycopg2-binary
# Past our pins on purpose (pip warns that hparam_joblib asks for an older range).
"$PY" -m pip install --quiet --upgrade optuna sqlalchemy loky joblib 2>&1 | grep -v "requires\|incompatible\|dependency resolver" || true
VERSIONS=$("$PY" - <<'EOF'
from hparam_joblib import _tested
from importlib.metadata import version
parts = []
for name in ("optuna", "sqlalchemy", "loky", "joblib"):
    v = version(name)
    tag = "" if name not in _tested.TESTED else (" (tested)" if _tested.inside(name, v) else " (OUTSIDE the tested range)")
    parts.append(f"{name} {v}{tag}")
print(", ".join(parts))
EOF
)
echo "newest releases: $VERSIONS"
export HPARAM_JOBLIB_ALLOW_UNTESTED=1
broke() { echo "ci: the newest releases ($VERSIONS) broke: $1"; exit 1; }
# When the main venv (MAIN_VENV, .venv) already has exactly these versions, `make test` has just
# run every test below on them: only the upgrade guard runs here, as a check of this venv.
versions_of() { "$1" -c 'from importlib.metadata import version as v; print(*(v(n) for n in ("optuna", "sqlalchemy", "loky", "joblib")))'; }
MAIN_PY="${MAIN_VENV:-.venv}/bin/python"
if [[ -x "$MAIN_PY" && "$(versions_of "$PY")" == "$(versions_of "$MAIN_PY")" ]]; then
  echo "the newest releases are the versions the main venv has: the budget races, kill tests and Optuna's storage tests ran on them in make test; here the upgrade guard only"
  "$PY" -m pytest -q -p no:randomly tests/integration/test_upgrade_safety.py || broke "the upgrade guard"
  echo "newest releases passed: $VERSIONS"
  exit 0
fi
"$PY" -m pytest -q -p no:randomly -n 2 --dist loadfile -W default \
  tests/integration/test_upgrade_safety.py tests/integration/test_journal_records.py \
  "tests/integration/test_storage_backends.py::test_budget_race_many_processes" \
  "tests/integration/test_search.py::test_32_workers_500_trials_exact_no_errors" \
  "tests/faults/test_faults.py::test_worker_killed_from_outside_is_reaped_and_rerun" \
  "tests/faults/test_faults.py::test_kill9_launcher_five_times_then_finish" \
  "tests/faults/test_faults.py::test_concurrent_launches_of_one_study_cooperate" \
  || broke "the budget races, kill tests or the upgrade guard (the pytest output above names the test)"
"$PY" tests/optuna_suite/run.py -q -n 4 || broke "Optuna's storage tests on our storages (output above)"
echo "newest releases passed: $VERSIONS"
