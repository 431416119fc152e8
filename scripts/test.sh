#!/usr/bin/env bash
# The test command: unit tests, then the real-data integration tests (tiny dvc repro on a catalog slice).
set -euo pipefail
cd "$(dirname "$0")/.."
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
       HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check components dags tests scripts
exec .venv/bin/python -m pytest "$@"
