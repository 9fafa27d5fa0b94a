#!/usr/bin/env bash
# A throwaway PostgreSQL server on a private port and socket directory (used by .ci/run).
#
#   eval "$(bash scripts/pg_throwaway.sh start DIR PORT)"   # prints: export HPARAM_JOBLIB_TEST_PG_URL=...
#   bash scripts/pg_throwaway.sh stop DIR
#
# Installs Debian's postgresql package when initdb is missing (needs root + apt). As root the
# server runs as the postgres user (initdb refuses root); DIR must be writable by it.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}; port=${3:-55432}
bindir() {
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
  start)
    if [[ -z "$(bindir)" ]]; then
      echo "installing postgresql (apt-get)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 || {
        apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
    fi
    bin=$(bindir)
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >&2
    echo "export HPARAM_JOBLIB_TEST_PG_URL=postgresql://postgres@127.0.0.1:$port"
    ;;
  stop)
    bin=$(bindir)
    [[ -d "$dir/data" ]] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
