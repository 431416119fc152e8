"""Driving docker/compose.yaml for real: the images, a tiny workspace image, an env file of fresh secrets, `up`
until healthy, the Airflow REST API and `down`. Shared by the compose test and the fault drills
(`scripts/drills.py`), which both run a whole deployment on this machine."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import ROOT, dag_workspace, wait_dag_run

TINY_IMAGE = "deepfusion-tiny:compose-test"
WORKERS = ("worker-cpu-1", "worker-cpu-2", "worker-gpu")
PORTS = {"airflow": 8080, "mlflow": 5000, "review": 8010}


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def sh(*cmd: str, timeout: int = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert not check or r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def call(method: str, url: str, body: dict | None = None, auth: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")


class Deployment:
    """One compose project: its env file and override files live in `folder` (written by `prepare`)."""

    def __init__(self, folder: Path, project: str) -> None:
        self.folder, self.project = Path(folder), project
        self.env_file = self.folder / "compose.env"
        self.secrets = dict(line.split("=", 1) for line in self.env_file.read_text().splitlines() if "=" in line)
        self.overrides = sorted(self.folder.glob("*.yaml"))

    def compose(self, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        files = ["-f", str(ROOT / "docker" / "compose.yaml")]
        for extra in self.overrides:
            files += ["-f", str(extra)]
        return sh(*compose_cmd(), "-p", self.project, *files, "--env-file", str(self.env_file), *args,
                  timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, *cmd: str, check: bool = True, user: str | None = None) -> subprocess.CompletedProcess:
        return sh("docker", "exec", *(["-u", user] if user else []), self.container(service), *cmd, check=check)

    def upload(self, service: str, folder: Path, contents: bool = False) -> None:
        """Copy `folder` (with `contents`: what it holds) into the landing area as the service user would own it (a
        tar stream unpacked by uid 50000 in the container: `docker cp -a` wants the uid in the host's passwd)."""
        where, what = (folder, ".") if contents else (folder.parent, folder.name)
        pack = subprocess.Popen(["tar", "-C", str(where), "-c", what], stdout=subprocess.PIPE)
        sh("docker", "exec", "-i", "-u", "50000", self.container(service), "tar", "-x", "--no-overwrite-dir", "-C",
           "/opt/deepfusion/landing", stdin=pack.stdout)
        assert pack.wait() == 0

    def health(self) -> dict[str, str]:
        out = {}
        for cid in self.compose("ps", "-q").stdout.split():
            info = json.loads(sh("docker", "inspect", cid).stdout)[0]
            name = info["Config"]["Labels"]["com.docker.compose.service"]
            state = info["State"]
            out[name] = state.get("Health", {}).get("Status") or state["Status"]
        return out

    def hostname(self, service: str) -> str:
        return json.loads(sh("docker", "inspect", self.container(service)).stdout)[0]["Config"]["Hostname"]

    def token(self) -> str:
        body = {"username": "admin", "password": self.secrets["AIRFLOW_ADMIN_PASSWORD"]}
        return call("POST", f"http://127.0.0.1:{PORTS['airflow']}/auth/token", body)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        if not getattr(self, "_token", None):
            self._token = self.token()
        try:
            return call(method, f"http://127.0.0.1:{PORTS['airflow']}/api/v2{path}", body, f"Bearer {self._token}")
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            self._token = self.token()  # expired (or the API server restarted with the same secret)
            return call(method, f"http://127.0.0.1:{PORTS['airflow']}/api/v2{path}", body, f"Bearer {self._token}")

    def mlflow(self, path: str) -> dict:
        import base64

        auth = base64.b64encode(f"admin:{self.secrets['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
        return call("GET", f"http://127.0.0.1:{PORTS['mlflow']}/api/2.0/mlflow/{path}", auth=f"Basic {auth}")

    def wait_run(self, dag_id: str, run_id: str, minutes: float) -> dict:
        return wait_dag_run(self.api, dag_id, run_id, minutes)

    def failure(self, dag_id: str, run_id: str, tasks: dict[str, dict]) -> str:
        """The failed tasks' states and the end of the first failed one's log, for the assertion message."""
        failed = {k: t["state"] for k, t in tasks.items() if t["state"] not in ("success", "skipped")}
        out = [json.dumps(failed)]
        for name, t in tasks.items():
            if t["state"] == "failed":
                out.append(f"--- {name}: {self.log(dag_id, run_id, t)[-4000:]}")
                break
        return "\n".join(out)

    def log(self, dag_id: str, run_id: str, ti: dict, attempt: int | None = None) -> str:
        index = f"?map_index={ti['map_index']}&full_content=true" if ti.get("map_index", -1) >= 0 else \
            "?full_content=true"
        log = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/"
                              f"{attempt or max(ti['try_number'], 1)}{index}")
        return json.dumps(log.get("content", log))

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t for t in tis}


def prepare(folder: Path, overrides: dict[str, dict] | None = None) -> None:
    """An env file of fresh secrets and the given override files (name -> compose document) in `folder`."""
    from cryptography.fernet import Fernet

    folder.mkdir(parents=True, exist_ok=True)
    keys = [k.split("=")[0] for k in (ROOT / "docker" / "env.example").read_text().split() if "=" in k]
    values = {k: secrets.token_hex(16) for k in keys}
    values.update({"POSTGRES_USER": "deepfusion", "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                   # the stand-ins of the upstream images (no registry here) and the tiny workspace's image
                   "POSTGRES_IMAGE": "deepfusion/postgres:15", "REDIS_IMAGE": "deepfusion/redis:7",
                   "DEEPFUSION_IMAGE": TINY_IMAGE})
    path = folder / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    for name, doc in (overrides or {}).items():
        (folder / name).write_text(yaml.safe_dump(doc))


def tiny_image(folder: Path) -> None:
    """deepfusion:latest with a synthetic catalog and the tiny params of the DAG tests (no data.dvc: the catalog
    comes with the image, as every container has it)."""
    ws = dag_workspace(folder / "ws")
    ctx = folder / "ctx"
    ctx.mkdir()
    shutil.copytree(ws / "data", ctx / "data")
    shutil.copy(ws / "params.yaml", ctx / "params.yaml")
    (ctx / "Dockerfile").write_text(
        "FROM deepfusion:latest\n"
        "COPY --chown=50000:50000 data /opt/deepfusion/data\n"
        "COPY --chown=50000:50000 params.yaml /opt/deepfusion/params.yaml\n"
        "USER root\nRUN rm -f /opt/deepfusion/data.dvc\nUSER 50000\n")
    sh("docker", "build", "-q", "-t", TINY_IMAGE, str(ctx), timeout=1200)
    shutil.rmtree(ws, ignore_errors=True)
    shutil.rmtree(ctx, ignore_errors=True)


def build_images(folder: Path) -> None:
    for what in ("build", "services"):
        r = sh("bash", str(ROOT / "scripts" / "images.sh"), what, timeout=3600)
        print(r.stdout.strip().splitlines()[-1])
    tiny_image(folder)


def up(d: Deployment, services: int = 12) -> None:
    """`up -d` and wait until every service with a health check is healthy (the review station waits for the
    first run, so it is left out); then unpause the DAGs."""
    d.compose("down", "-v", "--remove-orphans", check=False)  # a previous run killed halfway
    d.compose("up", "-d", timeout=1800)
    deadline = time.time() + 900
    while time.time() < deadline:  # health checks gate the start order
        states = {k: v for k, v in d.health().items() if k != "review"}
        if all(v in ("healthy", "exited") for v in states.values()) and len(states) >= services:
            break
        time.sleep(10)
    assert all(v in ("healthy", "exited") for v in states.values()), states
    for dag in ("retrain", "catalog_drift", "categorize"):
        d.api("PATCH", f"/dags/{dag}", {"is_paused": False})


def down(d: Deployment) -> list[str]:
    """`down -v`; the containers of the project still there afterwards (none, when all went well)."""
    d.compose("down", "-v", "--remove-orphans", timeout=600)
    return sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={d.project}").stdout.split()
