"""docker/compose.yaml for real, on this machine: the images (`scripts/images.sh build` and `services`: PostgreSQL,
Redis and the artifact store from Debian's packages where the upstream images cannot be pulled), the whole file up
(two CPU workers and the `gpu` queue's worker, sharing no volume for work), the hardening checked live, a tiny
retrain triggered through the REST API whose stages cross worker containers, an upload dropped into the landing
area and categorized through events alone, and everything down again with nothing left running.

Marker `compose`, outside the default run (image builds, a dozen containers and a tiny retrain do not fit the CI
budget): `.venv/bin/python -m pytest -m compose tests/compose -s` as root (it starts dockerd when none answers).
The tiny workspace is an image layer over deepfusion:latest (synthetic catalog, tiny params), so every container
has the same project and none shares a disk with another for work."""
from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, dag_workspace, make_catalog

pytestmark = [pytest.mark.compose, pytest.mark.slow]

PROJECT = "dfcompose"
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


class Deployment:
    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.secrets = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)

    def compose(self, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        files = ["-f", str(ROOT / "docker" / "compose.yaml"), "-f", str(self.env_file.parent / "limits.yaml")]
        return sh(*compose_cmd(), "-p", PROJECT, *files, "--env-file", str(self.env_file), *args, timeout=timeout,
                  check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, *cmd: str, check: bool = True, user: str | None = None) -> subprocess.CompletedProcess:
        return sh("docker", "exec", *(["-u", user] if user else []), self.container(service), *cmd, check=check)

    def upload(self, service: str, folder: Path) -> None:
        """Copy `folder` into the landing area as the service user would own it (a tar stream unpacked by uid
        50000 in the container: `docker cp -a` wants the uid in the host's passwd)."""
        pack = subprocess.Popen(["tar", "-C", str(folder.parent), "-c", folder.name], stdout=subprocess.PIPE)
        sh("docker", "exec", "-i", "-u", "50000", self.container(service), "tar", "-x", "-C",
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

    def token(self) -> str:
        body = {"username": "admin", "password": self.secrets["AIRFLOW_ADMIN_PASSWORD"]}
        return call("POST", f"http://127.0.0.1:{PORTS['airflow']}/auth/token", body)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        if not hasattr(self, "_token"):
            self._token = self.token()
        return call(method, f"http://127.0.0.1:{PORTS['airflow']}/api/v2{path}", body, f"Bearer {self._token}")

    def wait_run(self, dag_id: str, run_id: str, minutes: float) -> dict:
        deadline = time.time() + minutes * 60
        while time.time() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(5)
        raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {minutes} min")

    def failure(self, dag_id: str, run_id: str, tasks: dict[str, dict]) -> str:
        """The failed tasks' states and the end of the first failed one's log, for the assertion message."""
        failed = {k: t["state"] for k, t in tasks.items() if t["state"] not in ("success", "skipped")}
        out = [json.dumps(failed)]
        for name, t in tasks.items():
            if t["state"] == "failed":
                log = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{t['task_id']}/logs/"
                                      f"{max(t['try_number'], 1)}?full_content=true")
                out.append(f"--- {name}: {json.dumps(log.get('content', log))[-4000:]}")
                break
        return "\n".join(out)

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t for t in tis}


def call(method: str, url: str, body: dict | None = None, auth: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")


def env_file(folder: Path) -> Path:
    from cryptography.fernet import Fernet

    values = {k: "" for k in (ROOT / "docker" / "env.example").read_text().split() if "=" in k}
    values = {k.split("=")[0]: secrets.token_hex(16) for k in values}
    values.update({"POSTGRES_USER": "deepfusion", "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                   # the stand-ins of the upstream images (no registry here) and the tiny workspace's image
                   "POSTGRES_IMAGE": "deepfusion/postgres:15", "REDIS_IMAGE": "deepfusion/redis:7",
                   "DEEPFUSION_IMAGE": TINY_IMAGE})
    path = folder / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    # Each worker on one core and one thread, so the parallel stages' wall time measures parallelism, not two
    # workers oversubscribing the same cores.
    one = {"cpus": 1.0, "environment": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
    (folder / "limits.yaml").write_text(yaml.safe_dump({"services": {w: one for w in WORKERS}}))
    return path


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


@pytest.fixture(scope="module")
def deployment():
    t0 = time.time()
    for what in ("build", "services"):
        r = sh("bash", str(ROOT / "scripts" / "images.sh"), what, timeout=3600)
        print(r.stdout.strip().splitlines()[-1])
    folder = Path(tempfile.mkdtemp(prefix="deepfusion-compose-"))
    tiny_image(folder)
    d = Deployment(env_file(folder))
    d.compose("down", "-v", "--remove-orphans", check=False)  # a previous run killed halfway
    built = time.time()
    d.compose("up", "-d", timeout=1800)
    deadline = time.time() + 900
    while time.time() < deadline:  # health checks gate the start order; the station waits for the first run
        states = {k: v for k, v in d.health().items() if k != "review"}
        if all(v in ("healthy", "exited") for v in states.values()) and len(states) >= 12:
            break
        time.sleep(10)
    assert all(v in ("healthy", "exited") for v in states.values()), states
    d.times = {"images": built - t0, "up": time.time() - built}
    d.api("PATCH", "/dags/retrain", {"is_paused": False})
    d.api("PATCH", "/dags/catalog_drift", {"is_paused": False})
    d.api("PATCH", "/dags/categorize", {"is_paused": False})
    yield d
    t1 = time.time()
    d.compose("down", "-v", "--remove-orphans", timeout=600)
    left = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    print(f"compose: images {d.times['images']:.0f} s, up {d.times['up']:.0f} s, down {time.time() - t1:.0f} s")
    assert left == [], f"containers left running: {left}"
    shutil.rmtree(folder, ignore_errors=True)


def test_hardening_holds_live(deployment):
    d = deployment
    for cid in d.compose("ps", "-q").stdout.split():
        info = json.loads(sh("docker", "inspect", cid).stdout)[0]
        name = info["Config"]["Labels"]["com.docker.compose.service"]
        for bindings in (info["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings), (name, bindings)  # loopback only
        if info["State"]["Running"]:
            assert sh("docker", "exec", cid, "id", "-u").stdout.strip() != "0", f"{name} runs as root"
    noauth = d.exec("redis", "redis-cli", "ping", check=False)
    assert "NOAUTH" in noauth.stdout + noauth.stderr
    assert d.exec("redis", "sh", "-c", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping').stdout.strip() == "PONG"
    # The artifact store is not published on the host, and inside the network it takes no write without the
    # workers' password.
    r = d.exec("worker-cpu-1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data", "x",
               "http://artifact-store:8081/dvc/intruder", check=False)
    assert r.stdout == "401"
    # No volume for work is shared between the workers: only the landing area (where uploads arrive).
    mounts = {}
    for w in WORKERS:
        info = json.loads(sh("docker", "inspect", d.container(w)).stdout)[0]
        mounts[w] = {m["Name"] for m in info["Mounts"] if m["Type"] == "volume"}
    shared = set.intersection(*mounts.values())
    assert shared == {f"{PROJECT}_landing"}, mounts


def test_a_retrain_through_the_api_crosses_worker_containers(deployment):
    d = deployment
    t0 = time.time()
    run_id = d.api("POST", "/dags/retrain/dagRuns", {"logical_date": None, "conf": {"mode": "full", "epochs": 3}}
                   )["dag_run_id"]
    run = d.wait_run("retrain", run_id, minutes=45)
    tasks = d.tasks("retrain", run_id)
    assert run["state"] == "success", d.failure("retrain", run_id, tasks)
    d.retrain_seconds = time.time() - t0
    hosts = {k: t["hostname"] for k, t in tasks.items()}
    gpu_host = json.loads(sh("docker", "inspect", d.container("worker-gpu")).stdout)[0]["Config"]["Hostname"]
    assert hosts["train_fusion"] == hosts["train_baseline_image"] == gpu_host  # routed by queue
    assert hosts["audit"] != gpu_host and hosts["train_retrieval"] != gpu_host
    # ...so consecutive stages ran in containers that share no disk: their outputs came through the store.
    stored = d.exec("artifact-store", "find", "/srv/artifacts/dvc", "-type", "f").stdout.split()
    assert len(stored) >= 20, stored
    # The four baselines are one wave after the audit: two of them ran at the same time on two containers.
    span = {k: (datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]))
            for k, t in tasks.items() if k.startswith("train_baseline_")}
    assert any(a[0] < b[1] and b[0] < a[1] and hosts[x] != hosts[y]
               for x, a in span.items() for y, b in span.items() if x < y), span
    mlflow = f"http://127.0.0.1:{PORTS['mlflow']}/api/2.0/mlflow/registered-models/alias?name=deepfusion&alias=champion"
    auth = base64.b64encode(f"admin:{d.secrets['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    version = call("GET", mlflow, auth=f"Basic {auth}")["model_version"]
    assert version["tags"] and json.loads({t["key"]: t["value"] for t in version["tags"]}["reference_data"])
    # Sequential vs parallel in the same run: the stages one after another would take at least the sum of their
    # task times; the graph took the span from the first stage's start to the last one's end.
    from components.orchestration import stage_graph

    ids = {s.replace("@", "_") for s in stage_graph.read(ROOT)}
    stages = {k: (datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]))
              for k, t in tasks.items() if k in ids}
    serial = sum((b - a).total_seconds() for a, b in stages.values())
    wall = (max(b for _, b in stages.values()) - min(a for a, _ in stages.values())).total_seconds()
    print(f"compose: tiny retrain through the API in {d.retrain_seconds:.0f} s over "
          f"{len({hosts[k] for k in stages})} worker containers (one core, one thread each); its {len(stages)} stages: "
          f"{serial:.0f} s of task time one after another, {wall:.0f} s as the graph ran them "
          f"({serial / wall:.2f}x)")


def test_an_upload_is_categorized_on_workers_that_never_saw_the_run(deployment, tmp_path):
    d = deployment
    batch = make_catalog(tmp_path / "2016-05", n=60, seed=31, start_id=70_000)
    t0 = time.time()
    d.upload("worker-cpu-2", batch)  # the upload service: files first, the marker last
    (tmp_path / "marker" / "2016-05").mkdir(parents=True)
    (tmp_path / "marker" / "2016-05" / "_READY").write_text("")
    d.upload("worker-cpu-2", tmp_path / "marker" / "2016-05")
    deadline = time.time() + 1200
    runs: list[dict] = []
    while time.time() < deadline:  # landing watcher -> catalog_drift -> asset event -> categorize
        runs = d.api("GET", "/dags/categorize/dagRuns")["dag_runs"]
        if runs and runs[-1]["state"] in ("success", "failed"):
            break
        time.sleep(5)
    drift = d.api("GET", "/dags/catalog_drift/dagRuns")["dag_runs"]
    assert drift and drift[-1]["state"] == "success", d.failure("catalog_drift", drift[-1]["dag_run_id"], d.tasks(
        "catalog_drift", drift[-1]["dag_run_id"])) if drift else "no catalog_drift run"
    assert runs and runs[-1]["state"] == "success", d.failure("categorize", runs[-1]["dag_run_id"], d.tasks(
        "categorize", runs[-1]["dag_run_id"])) if runs else "no categorize run"
    state = json.loads(d.exec("worker-cpu-1", "cat", "/opt/deepfusion/landing/_state/2016-05.json").stdout)
    assert state["state"] == "categorized" and state["model"].startswith("models:/deepfusion/")
    found = [w for w in WORKERS if d.exec(w, "test", "-f", f"{state['predictions']}/predictions.csv",
                                          check=False).returncode == 0]
    assert len(found) == 1  # written on the worker that merged it, nowhere else
    print(f"compose: upload categorized {time.time() - t0:.0f} s after _READY")
