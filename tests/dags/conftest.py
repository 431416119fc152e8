"""Airflow for tests: a throw-away AIRFLOW_HOME with its own migrated SQLite metadata DB."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
# Airflow reads its config at import: set it before anything imports airflow in this process.
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "PYTHONPATH": f"{DAGS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
}
os.environ.update(AIRFLOW_ENV)
if str(DAGS) not in sys.path:
    sys.path.insert(0, str(DAGS))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "airflow"), "db", "migrate"], check=True, capture_output=True,
                   env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}, timeout=600)
    return _HOME
