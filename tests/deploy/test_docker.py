"""What can be checked without a Docker engine: compose schema, Dockerfile lint, entrypoint, wiring."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
DOCKER = ROOT / "docker"


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def test_compose_file_matches_the_compose_schema():
    r = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfiles_pass_hadolint():
    r = run(str(BIN / "hadolint"), "--failure-threshold", "warning",
            str(DOCKER / "pipeline.Dockerfile"), str(DOCKER / "services.Dockerfile"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_wiring():
    c = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    s = c["services"]
    workers = ("worker-cpu-1", "worker-cpu-2", "worker-gpu")
    assert {"postgres", "redis", "artifact-store", "mlflow", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", *workers, "review"} <= set(s)
    assert "name" not in c  # docker-compose 1.29 refuses a top-level name
    gpu = s["worker-gpu"]
    assert "--queues" in gpu["command"] and gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert "deploy" not in gpu  # the base file runs anywhere; the GPU is the override's
    override = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]["worker-gpu"]
    assert override["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name, svc in s.items():
        if not name.endswith("-init"):  # one-shot setup containers
            assert "healthcheck" in svc, name
    assert s["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "gpu_pool" in " ".join(s["airflow-init"]["command"])
    # No volume for work shared between workers: only the landing area, where uploads arrive.
    volumes = {w: {v.split(":")[0] for v in s[w]["volumes"]} for w in workers}
    assert set.intersection(*volumes.values()) == {"landing"}
    assert all(s[w]["environment"]["DEEPFUSION_ARTIFACTS_URL"].startswith("http://artifact-store:") for w in workers)
    # Secrets only through env files; none committed.
    assert not (DOCKER / ".env").exists() and ".env" in (ROOT / ".gitignore").read_text()


def test_images_run_as_non_root():
    lines = (DOCKER / "pipeline.Dockerfile").read_text().splitlines()
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] != "USER root" and user[-1] != "USER 0"


def test_entrypoint_runs_its_command_as_a_plain_command():
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"
    r = run(str(DOCKER / "entrypoint.sh"), "airflow", "version", env=env)
    assert r.returncode == 0 and r.stdout.strip().startswith("3.3"), r.stdout + r.stderr
    r = run(str(DOCKER / "entrypoint.sh"), "python", "-c", "import components.registry; print('ok')", env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_compose_refuses_missing_secrets_and_the_context_leaves_local_state_out():
    import re

    text = (DOCKER / "compose.yaml").read_text()
    interpolated = re.findall(r"(?<!\$)\$\{([A-Z_]+)([^}]*)\}", text)
    # Every value must be set; only the image names have defaults (the upstream images, or the stand-ins).
    assert interpolated and all(rest.startswith(":?") or (name.endswith("_IMAGE") and rest.startswith(":-"))
                                for name, rest in interpolated), interpolated
    example = dict(ln.split("=", 1) for ln in (DOCKER / "env.example").read_text().splitlines()
                   if ln and not ln.startswith("#"))
    secrets = [k for k in example if any(w in k for w in ("PASSWORD", "SECRET", "KEY"))]
    assert secrets and all(example[k] == "" for k in secrets)  # no placeholder a stack could run on
    assert "--backend-store-uri" not in text and "MLFLOW_BACKEND_STORE_URI" in text  # no password in argv
    assert "--allowed-hosts" in text and "basic-auth" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "docker/.env", "data", "mlflow.db", ".git", "artifacts"} <= set(ignored)


def test_compose_binds_to_loopback_and_gives_each_service_only_its_secrets():
    """Issue 39.6 (static half; the live half is the multi-machine issue's compose run)."""
    s = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    published = [(name, p) for name, svc in s.items() for p in svc.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for _, p in published), published
    redis = s["redis"]
    script = redis["command"][-1]  # the password goes to a 0600 config file, never into redis-server's argv
    assert "requirepass" in script and "exec redis-server /tmp/redis.conf" in script and "--requirepass" not in script
    broker = s["airflow-scheduler"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://:${REDIS_PASSWORD:?")
    env = s["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW__CORE__FERNET_KEY:?")
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW__API_AUTH__JWT_SECRET:?")
    for name in s:
        assert "env_file" not in s[name], f"{name} gets the whole docker/.env"
    assert not {k for k in s["mlflow"]["environment"] if "AIRFLOW" in k or k.startswith("POSTGRES_")}


def test_compose_gives_each_service_its_own_database_role_and_airflow_roles():
    """Issue 39.5/39.6 (static): one PostgreSQL superuser served every database and every container got the whole
    docker/.env; Airflow had the simple auth manager's one shared admin."""
    s = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    airflow = s["airflow-scheduler"]["environment"]
    assert "://airflow_svc:${AIRFLOW_DB_PASSWORD:?" in airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "://mlflow_svc:${MLFLOW_DB_PASSWORD:?" in s["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert airflow["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
    holders = {name for name, svc in s.items() for k, v in (svc.get("environment") or {}).items()
               if "POSTGRES_PASSWORD" in f"{k}={v}"}
    assert holders == {"postgres"}, holders  # the superuser's password never leaves the database container
    admin = {name for name, svc in s.items() if "AIRFLOW_ADMIN_PASSWORD" in (svc.get("environment") or {})}
    assert admin == {"airflow-init"}
    assert "AIRFLOW_ADMIN_PASSWORD\" |" in " ".join(s["airflow-init"]["command"])  # on stdin, not in argv
    # The review station: its own role; its admin's password only in its one-shot init, its DB only where used.
    review_db = {name for name, svc in s.items() for k, v in (svc.get("environment") or {}).items()
                 if "REVIEW_DB_PASSWORD" in f"{k}={v}"}
    assert review_db == {"postgres", "worker-cpu-1", "worker-cpu-2", "review-init", "review"}, review_db
    assert {n for n, svc in s.items() if "REVIEW_ADMIN_PASSWORD" in str(svc.get("environment"))} == {"review-init"}
    assert "://review_svc:${REVIEW_DB_PASSWORD:?" in s["review"]["environment"]["DEEPFUSION_REVIEW_DB"]
    assert set(s["review"]["environment"]) == {"DEEPFUSION_REVIEW_DB", "DEEPFUSION_REVIEW_SECRET", "DEEPFUSION_HOME",
                                               "DEEPFUSION_ARTIFACTS_URL", "DEEPFUSION_ARTIFACTS_USER",
                                               "DEEPFUSION_ARTIFACTS_PASSWORD"}
    # The artifact store: the writers' password on the workers only, the station's read-only one on it only.
    holders = {secret: {name for name, svc in s.items() if f"${{{secret}:?" in str(svc.get("environment"))}
               for secret in ("ARTIFACTS_PASSWORD", "ARTIFACTS_READ_PASSWORD")}
    assert holders == {"ARTIFACTS_PASSWORD": {"artifact-store", "worker-cpu-1", "worker-cpu-2", "worker-gpu"},
                       "ARTIFACTS_READ_PASSWORD": {"artifact-store", "review"}}, holders
    assert s["review"]["environment"]["DEEPFUSION_ARTIFACTS_USER"] == "reader"
    conf = (DOCKER / "services" / "artifact-store.conf").read_text()
    assert "limit_except GET HEAD {" in conf and "htpasswd-write" in conf.split("limit_except", 1)[1]
    roles = (DOCKER / "initdb" / "10-roles.sh").read_text()
    for role in ("airflow_svc", "mlflow_svc", "review_svc"):
        assert f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'" in roles
    assert "\\getenv" in roles and "PASSWORD}" not in roles  # passwords from the environment, not argv
