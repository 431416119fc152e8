"""Airflow for tests: a throw-away AIRFLOW_HOME with its own migrated SQLite metadata DB.

The environment is set by a session fixture (never at import): Airflow reads its config when first
imported, and every in-process import of airflow happens inside fixtures that depend on `airflow_env`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "PYTHONPATH": f"{DAGS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.syspath_prepend(str(DAGS))
        yield env


@pytest.fixture(scope="session")
def airflow_db(airflow_env) -> Path:
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "airflow"), "db", "migrate"], check=True, capture_output=True,
                   env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}, timeout=600)
    return Path(airflow_env["AIRFLOW_HOME"])
