#!/usr/bin/env bash
# Local Airflow: `airflow standalone` against this project's DAGs, metadata DB in ./airflow_home (SQLite),
# LocalExecutor, MLflow on the project's SQLite store. Open http://localhost:8080 (admin password printed).
#   bash scripts/airflow.sh           # start
#   AIRFLOW_PORT=8090 bash scripts/airflow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
port=${AIRFLOW_PORT:-8080}
export AIRFLOW_HOME="$root/airflow_home"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
# One task process per core (the default 32 LocalExecutor processes on 2 cores only thrash); retrain has no
# start_date, so starting the UI does not launch the Sunday training that was just missed.
cores=$(nproc)
export AIRFLOW__CORE__PARALLELISM=$cores AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=$cores
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$root/airflow_home/airflow.db"
# A different API port must be told to the workers too, or every task fails with "Connection refused".
export AIRFLOW__API__PORT=$port AIRFLOW__API__BASE_URL="http://localhost:$port"
export PYTHONPATH="$root/dags${PYTHONPATH:+:$PYTHONPATH}"
export DEEPFUSION_HOME="$root" DEEPFUSION_BIN="$root/.venv/bin" PATH="$root/.venv/bin:$PATH"
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1
mkdir -p "$AIRFLOW_HOME" "$root/landing"
airflow db migrate >/dev/null
airflow pools set gpu_pool 1 "GPU training slots" >/dev/null
exec airflow standalone
