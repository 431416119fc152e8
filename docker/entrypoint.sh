#!/usr/bin/env bash
# Container entrypoint: wait for the metadata DB when Airflow is configured with one, then exec the command.
# Also runnable as a plain command outside Docker (tests/dags/test_docker.py does).
set -euo pipefail
if [ -n "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ "${1:-}" = "airflow" ] && [ "${SKIP_DB_WAIT:-0}" != "1" ]; then
  for _ in $(seq 1 60); do
    airflow db check >/dev/null 2>&1 && break
    echo "entrypoint: waiting for the metadata database..." >&2
    sleep 2
  done
fi
exec "$@"
