#!/usr/bin/env bash
# Reproduce every table of benchmarks/README.md in one go (under 13 minutes on 2 cores; see
# benchmarks/README.md for the measured time).
#
#   bash benchmarks/run_all.sh                 # full run, results in benchmarks/results/full/
#   bash benchmarks/run_all.sh --quick smoke   # smoke version of every script (~5 min)
#   RUN_NAME=mybox bash benchmarks/run_all.sh  # another name, to compare machines or commits
#
# The full run copies its figures to benchmarks/figures/ (the ones README.md shows).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
QUICK=()
if [[ "${1:-}" == "--quick" ]]; then QUICK=(--quick); shift; fi
RUN=${1:-${RUN_NAME:-$([[ ${#QUICK[@]} -gt 0 ]] && echo quick || echo full)}}
# Full run: scaling.py runs every point once (five frameworks since the fixed-costs issue;
# zero-work 3 times), overhead.py twice; contention.py collects hundreds of storage-call samples
# per run and runs each point once. Raise these for a tighter spread (SCALING_REPEATS=2 adds
# ~6 min). --quick runs every point once.
SCALING_REPEATS=${SCALING_REPEATS:-1}
OVERHEAD_REPEATS=${OVERHEAD_REPEATS:-2}
CONTENTION_REPEATS=${CONTENTION_REPEATS:-1}

# Measure a fixed commit: snapshot HEAD's hparam_joblib/ (others may be editing the work tree)
# and put it first on PYTHONPATH. SNAPSHOT=0 measures the installed package as it is.
out=benchmarks/results/$RUN
mkdir -p "$out"
if [[ "${SNAPSHOT:-1}" == 1 && -z "${HJ_BENCH_SRC:-}" ]]; then
  rm -rf "$out/src" && mkdir -p "$out/src"
  git archive HEAD hparam_joblib | tar -x -C "$out/src"
  git rev-parse --short HEAD > "$out/src/COMMIT"
  export HJ_BENCH_SRC=$PWD/$out/src
fi
echo "measuring hparam_joblib from ${HJ_BENCH_SRC:-the installed package} ($(cat "${HJ_BENCH_SRC:-/dev/null}/COMMIT" 2>/dev/null || git rev-parse --short HEAD))"

start=$(date +%s)
# The headline: real training code (scikit-learn, PyTorch) beside joblib.Parallel and Optuna's
# recipes. REAL=0 skips it; REAL_REPEATS (default 1) for a tighter spread. A run past REAL_LIMIT
# seconds (default 40: 3-4x joblib's time) is stopped and shown as such: Optuna's recipes leave
# every trial all the cores' OpenMP threads, and took 120 s+ on scikit-learn here.
if [[ "${REAL:-1}" == 1 ]]; then
  "$PY" benchmarks/real_workloads.py --run-name "$RUN" "${QUICK[@]}" --repeats "${REAL_REPEATS:-1}" \
    --workloads "${REAL_WORKLOADS:-sklearn,torch}" --time-limit "${REAL_LIMIT:-40}"
fi
t0=$(date +%s)
"$PY" benchmarks/scaling.py --run-name "$RUN" "${QUICK[@]}" $([[ ${#QUICK[@]} -eq 0 ]] && echo --repeats "$SCALING_REPEATS")
t1=$(date +%s)
"$PY" benchmarks/overhead.py --run-name "$RUN" "${QUICK[@]}" $([[ ${#QUICK[@]} -eq 0 ]] && echo --repeats "$OVERHEAD_REPEATS")
t2=$(date +%s)
"$PY" benchmarks/contention.py --run-name "$RUN" "${QUICK[@]}" $([[ ${#QUICK[@]} -eq 0 ]] && echo --repeats "$CONTENTION_REPEATS")
t3=$(date +%s)
# Scale-out rows: Dask (LocalCluster) + PostgreSQL (a throwaway server) beside loky + SQLite.
# SCALEOUT=0 skips them (no PostgreSQL on the machine); the two other combos: scaleout.py alone.
if [[ "${SCALEOUT:-1}" == 1 ]]; then
  "$PY" benchmarks/scaleout.py --run-name "$RUN" "${QUICK[@]}" --combos loky+sqlite,dask+postgresql
fi
t4=$(date +%s)
printf 'real %ss, scaling %ss, overhead %ss, contention %ss, scaleout %ss, total %ss\n' \
  $((t0 - start)) $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) $((t4 - t3)) $((t4 - start)) | tee "$out/run_all_time.txt"
if [[ ${#QUICK[@]} -eq 0 ]]; then
  mkdir -p benchmarks/figures
  cp "$out/scaling.png" "$out/overhead.png" "$out/contention.png" benchmarks/figures/
  [[ -f "$out/scaleout.png" ]] && cp "$out/scaleout.png" benchmarks/figures/
fi
