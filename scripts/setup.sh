#!/usr/bin/env bash
# One-time (idempotent) setup: project .venv from the committed lock, the package, and the catalog data.
#   bash scripts/setup.sh            # venv + data
#   SKIP_DATA=1 bash scripts/setup.sh  # venv only
set -euo pipefail
cd "$(dirname "$0")/.."
# The system's Python 3.11 when there is one: the platform's services run as an unprivileged user
# (scripts/platform.sh), who must be able to run the venv's interpreter, and one under /root (pyenv) is not
# reachable for them. PYTHON=... picks another.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3.11 ]; then PY=/usr/bin/python3.11; else PY=${PYTHON:-python3.11}; fi
export DVC_NO_ANALYTICS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
lock_hash=$(sha256sum requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.deepfusion-lock 2>/dev/null)" != "$lock_hash" ]; then
  echo "[setup] installing requirements/lock.txt (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade "pip>=25"
  .venv/bin/python -m pip install -q -r requirements/lock.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip check
  echo "$lock_hash" > .venv/.deepfusion-lock
fi

# The validation pages' scripts and styles (pinned npm packages, digests checked), served locally: offline
# Data Docs. Fetched here, at setup, never while the pipeline runs.
.venv/bin/python -m components.web_assets fetch

if [ "${SKIP_DATA:-0}" != "1" ]; then
  # data/ is tracked by data.dvc; the remote "catalog" is configured in .dvc/config.
  echo "[setup] dvc pull (catalog data)"
  .venv/bin/dvc pull -q data.dvc
fi
echo "[setup] done"
