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

import io
import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from tests.compose.deployment import WORKERS, Deployment, build_images, down, prepare, sh, up
from tests.conftest import ROOT, make_catalog

pytestmark = [pytest.mark.compose, pytest.mark.slow]

PROJECT = "dfcompose"
# Each worker on one core and one thread, so the parallel stages' wall time measures parallelism, not two
# workers oversubscribing the same cores.
ONE_CORE = {"cpus": 1.0, "environment": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


@pytest.fixture(scope="module")
def deployment():
    t0 = time.time()
    folder = Path(tempfile.mkdtemp(prefix="deepfusion-compose-"))
    build_images(folder)
    prepare(folder, {"limits.yaml": {"services": {w: ONE_CORE for w in WORKERS}}})
    d = Deployment(folder, PROJECT)
    built = time.time()
    up(d)
    d.times = {"images": built - t0, "up": time.time() - built}
    yield d
    t1 = time.time()
    left = down(d)
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
    # The review station's read-only user reads the store and changes nothing in it.
    reader = ["-u", f"reader:{d.secrets['ARTIFACTS_READ_PASSWORD']}", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    for method in ("PUT", "DELETE", "MKCOL"):
        r = d.exec("review", "curl", *reader, "-X", method, "--data", "x", "http://artifact-store:8081/dvc/intruder/",
                   check=False)
        assert r.stdout == "401", (method, r.stdout)
    r = d.exec("review", "curl", *reader, "http://artifact-store:8081/dvc/nothing-here", check=False)
    assert r.stdout == "404"  # authenticated, and nothing there
    env = json.loads(sh("docker", "inspect", d.container("review")).stdout)[0]["Config"]["Env"]
    assert d.secrets["ARTIFACTS_PASSWORD"] not in " ".join(env)  # never the writers' password
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
    gpu_host = d.hostname("worker-gpu")
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
    version = d.mlflow("registered-models/alias?name=deepfusion&alias=champion")["model_version"]
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


def test_the_review_station_shows_the_champion_without_the_workers_disks(deployment):
    """The station has a volume of its own and the artifact store's read-only user: it rebuilt the champion's run
    from the pointer `promote` left there, and shows the review queue categorize filled."""
    d = deployment
    deadline = time.time() + 600
    log = ""
    while time.time() < deadline:
        log = d.compose("logs", "--no-color", "review", check=False).stdout
        if "the champion)" in log and d.exec("review", "curl", "-fsS", "-o", "/dev/null", "http://localhost:8010/login",
                                             check=False).returncode == 0:
            break
        time.sleep(5)
    assert "(deepfusion v1, the champion)" in log, log[-3000:]
    assert d.exec("review", "test", "-f", "/opt/deepfusion/runs/champion-deepfusion-v1/artifacts/features/"
                  "encoders.json", check=False).returncode == 0
    body = json.dumps({"user": "admin", "password": d.secrets["REVIEW_ADMIN_PASSWORD"]})
    token = json.loads(d.exec("review", "curl", "-fsS", "-H", "Content-Type: application/json", "--data", body,
                              "http://localhost:8010/api/token").stdout)["token"]
    queues = json.loads(d.exec("review", "curl", "-fsS", "-H", f"Authorization: Bearer {token}",
                               "http://localhost:8010/api/queues").stdout)
    state = json.loads(d.exec("worker-cpu-1", "cat", "/opt/deepfusion/landing/_state/2016-05.json").stdout)
    worker = next(w for w in WORKERS if d.exec(w, "test", "-f", f"{state['predictions']}/review_queue.csv",
                                               check=False).returncode == 0)
    rows = pd.read_csv(io.StringIO(d.exec(worker, "cat", f"{state['predictions']}/review_queue.csv").stdout))
    categorize = next(q for q in queues if q["queue"] == "categorize")
    assert categorize["open"] == len(rows), (queues, len(rows))
    print(f"compose: review station serving the champion's run; categorize queue {categorize['open']} open")
