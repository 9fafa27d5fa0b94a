#!/usr/bin/env bash
# Screenshot of optuna-dashboard showing a study database written by hparam_joblib.
# Not run in CI: it may install Debian's chromium (apt-get, needs root or sudo).
#
#   scripts/dashboard_screenshot.sh [DB] [OUT.png] [PAGE]
#
#   DB    study database      (default: optuna_studies/digits_sgd_pruning.db,
#                              written by `python examples/sklearn_pruning.py`)
#   OUT   PNG to write        (default: docs/figures/dashboard.png)
#   PAGE  dashboard page      (default: the study's overview page, /dashboard/studies/<id>;
#                              e.g. "trial-table" or "analytics" for its other tabs)
#
# It serves DB with `hparam-joblib dashboard` on a free 127.0.0.1 port, waits until the API
# answers, lets headless chromium render the page (the dashboard is a JavaScript app), writes
# the PNG and stops the server. Run from anywhere; paths are relative to the repository root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DB="${1:-optuna_studies/digits_sgd_pruning.db}"
OUT="${2:-docs/figures/dashboard.png}"
PAGE="${3:-}"
WIDTH="${WIDTH:-1400}"
HEIGHT="${HEIGHT:-900}"
BUDGET_MS="${BUDGET_MS:-8000}"   # virtual time chromium gives the page's scripts and plots

die() { echo "dashboard_screenshot: $*" >&2; exit 2; }

if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
[[ -f "$DB" ]] || die "$DB: no such file (run: python examples/sklearn_pruning.py)"
"$PY" -c "import optuna_dashboard" 2>/dev/null \
  || die "optuna-dashboard is not installed: pip install \"hparam_joblib[dashboard]\""

# -- chromium ------------------------------------------------------------------------------
CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$CHROMIUM" ]]; then
  command -v apt-get >/dev/null || die "chromium is not installed and there is no apt-get"
  SUDO=""; [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
  apt-cache policy chromium | grep -q 'Candidate: [0-9]' \
    || $SUDO apt-get update -qq
  echo "dashboard_screenshot: installing chromium (apt-get install -y chromium)" >&2
  $SUDO apt-get install -y -qq chromium >/dev/null
  CHROMIUM="$(command -v chromium)"
fi

# -- the server ----------------------------------------------------------------------------
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# `hparam-joblib dashboard` execs optuna-dashboard, so this pid is the server itself.
"$PY" -m hparam_joblib dashboard "$DB" --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

STUDIES=""
for _ in $(seq 300); do   # up to 30 s
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "optuna-dashboard exited"; }
  if STUDIES="$(curl -fsS --max-time 2 "$BASE/api/studies" 2>/dev/null)"; then break; fi
  STUDIES=""
  sleep 0.1
done
[[ -n "$STUDIES" ]] || { cat "$WORK/server.log" >&2; die "optuna-dashboard did not answer on $BASE"; }
STUDY_ID="$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["study_summaries"][0]["study_id"])' \
  <<<"$STUDIES")"
URL="$BASE/dashboard/studies/$STUDY_ID${PAGE:+/$PAGE}"

# -- the screenshot ------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$WORK/profile" \
  --window-size="$WIDTH,$HEIGHT" --virtual-time-budget="$BUDGET_MS" \
  --screenshot="$OUT" "$URL" >"$WORK/chromium.log" 2>&1 \
  || { tail -20 "$WORK/chromium.log" >&2; die "chromium failed"; }
[[ -s "$OUT" ]] || { tail -20 "$WORK/chromium.log" >&2; die "chromium wrote no screenshot"; }
echo "$OUT  ($URL)"
