#!/usr/bin/env bash
# The test command: lint, type-check, the import rules (pyproject.toml's [tool.importlinter]), and
# the whole test suite against real peers on loopback (SQLite and a PostgreSQL server started here,
# GStreamer RTSP cameras, a real hub process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# A PostgreSQL server for the store tests (Debian's cluster, started if it is not running).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
if [ -z "${VMS_TEST_PG_URL:-}" ] && command -v pg_lsclusters >/dev/null; then
  read -r ver cluster _port status _rest < <(pg_lsclusters -h | head -n1) || true
  if [ -n "${ver:-}" ]; then
    [ "$status" = online ] || as_root pg_ctlcluster "$ver" "$cluster" start
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
    as_pg psql -qAtc "SELECT 1 FROM pg_roles WHERE rolname='vms_test'" | grep -q 1 \
      || as_pg psql -qc "CREATE ROLE vms_test LOGIN CREATEDB PASSWORD 'vms_test'"
    export VMS_TEST_PG_URL="postgresql+psycopg://vms_test:vms_test@127.0.0.1:5432/postgres"
  fi
fi

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy && .venv/bin/mypy tests/unit
echo "== import rules"; .venv/bin/lint-imports
# Test files run side by side (most of the suite waits on cameras, hubs and timers, not on the CPU);
# one file stays on one worker, so a file's hub and cameras are started once. VMS_TEST_WORKERS=0
# runs them one after another.
echo "== pytest"; .venv/bin/pytest -q --durations=15 -n "${VMS_TEST_WORKERS:-3}" --dist loadfile "$@"
