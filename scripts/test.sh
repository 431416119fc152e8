#!/usr/bin/env bash
# The test command: ruff, the docs build and the README numbers check, then pytest (unit, model, DAG, deploy,
# browser and real-data integration tests), then the production-platform tests (marker `platform`: they start PostgreSQL, Redis, the MLflow server and Airflow with
# Celery workers through scripts/platform.sh) as their own step. With arguments, only `pytest <arguments>` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
       HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check components dags tests scripts research
# The docs site builds offline with no broken link or page, and no number left the README without landing in
# the docs (scripts/check_numbers.py).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
.venv/bin/python scripts/check_numbers.py
# The browser tests drive Debian's Chromium (Playwright's own browser download needs the internet).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[test] installing chromium for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The first step runs on TEST_WORKERS pytest-xdist workers (0 = one process), whole files per worker so that a
# module's fixtures (a retrain DAG run, the real-slice `dvc repro`) are built once. Each worker, and the stages
# and Airflow tasks it starts, computes on one thread: two workers of two torch threads each oversubscribe two
# cores (README, Tests: the suite took 928 s that way, 563 s in one process and 398 s on two one-thread workers).
workers=${TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python -m pytest -n "$workers" --dist loadfile
else
  .venv/bin/python -m pytest
fi
# The production platform's services and ports are one per machine: its tests run in one process, as their own step.
exec .venv/bin/python -m pytest -m platform tests/platform
