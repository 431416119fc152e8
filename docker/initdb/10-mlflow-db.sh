#!/usr/bin/env bash
# Second database for the MLflow server, next to Airflow's metadata database.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE ${MLFLOW_DB:-mlflow};"
