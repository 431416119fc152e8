#!/usr/bin/env bash
# The test command: ruff, then pytest (unit, model, DAG, deploy and real-data integration tests), then the
# production-stack tests (marker `stack`: they start PostgreSQL, Redis, the MLflow server and Airflow with
# Celery workers through scripts/stack.sh) as their own step. Arguments go to the first pytest step only.
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
       HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check components dags tests scripts
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ]; then
  exec .venv/bin/python -m pytest -m stack tests/stack
fi
