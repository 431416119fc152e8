"""Load and fault drills on the compose deployment (docker/compose.yaml), loopback only, bounded in count and time.

    .venv/bin/python scripts/drills.py up            # images, fresh secrets, `up -d` until healthy (~10 min)
    .venv/bin/python scripts/drills.py retrain       # faults during a tiny retrain, one at a time
    .venv/bin/python scripts/drills.py categorize    # faults while uploads are validated, reported and categorized
    .venv/bin/python scripts/drills.py load [--batches 100]   # N batches land within a minute
    .venv/bin/python scripts/drills.py down          # `down -v`: nothing left running
    .venv/bin/python scripts/drills.py all           # up, the three drills, down

Run as root on a machine with a Docker engine (scripts/images.sh starts one). Each fault hits one service while a
named task runs: a worker container killed, PostgreSQL restarted, Redis restarted, the MLflow server stopped for a
minute, the artifact store cut off the network for a minute, a worker's disks filled. After each the script checks
the invariants: the run recovered or failed with a message saying what to do, every batch was reported and
categorized exactly once (its state history and one predictions folder across all workers), no model version was
registered twice, and `@champion` loads. It prints one table row per fault (fault -> what happened -> recovery
time) and writes all rows to <state>/drills.json; `--markdown` prints the table for docs/operations.md.

The deployment is the compose test's (tests/compose/deployment.py): the tiny synthetic workspace, two CPU workers
and the `gpu` queue's worker, each with its own volumes. Here worker-cpu-2's three work volumes are size-limited
tmpfs mounts, so filling its disks fills only them (never the host's)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.compose.deployment import WORKERS, Deployment, build_images, down, prepare, sh, up  # noqa: E402
from tests.conftest import make_catalog  # noqa: E402

PROJECT = "dfdrills"
STATE = Path("/tmp/deepfusion-drills")
FULL_WORKER = "worker-cpu-2"  # the worker whose disks the disk-full drill fills
WORK_MOUNTS = ("/opt/deepfusion/runs", "/opt/deepfusion/.dvc/cache", "/opt/deepfusion/artifacts")
SMALL_DISKS = {"volumes": {v: {"driver_opts": {"type": "tmpfs", "device": "tmpfs",
                                                 "o": f"size={size},uid=50000,gid=50000"}}
                           for v, size in (("runs-cpu-2", "1g"), ("cache-cpu-2", "1g"), ("outputs-cpu-2", "512m"))}}


@dataclass
class Row:
    fault: str
    during: str
    happened: str = ""
    recovery_s: float | None = None
    ok: bool = False
    details: dict = field(default_factory=dict)


def deployment() -> Deployment:
    return Deployment(STATE, PROJECT)


def cmd_up() -> None:
    t0 = time.time()
    STATE.mkdir(parents=True, exist_ok=True)
    build_images(STATE)
    prepare(STATE, {"small-disks.yaml": SMALL_DISKS})
    built = time.time()
    up(deployment())
    print(f"drills: images {built - t0:.0f} s, up {time.time() - built:.0f} s (project {PROJECT}, state {STATE})")


def cmd_down() -> None:
    t0 = time.time()
    left = down(deployment())
    print(f"drills: down in {time.time() - t0:.0f} s, containers left: {left or 'none'}")
    if left:
        sys.exit(1)


# ---- faults: each blocks for as long as it lasts and returns what it did -------------------------------------------

def healthy(d: Deployment, service: str, minutes: float = 5) -> float:
    """Seconds until `service` reports healthy (or running, without a health check) again."""
    t0, deadline = time.time(), time.time() + minutes * 60
    while time.time() < deadline:
        if d.health().get(service) in ("healthy", "running"):
            return time.time() - t0
        time.sleep(2)
    raise AssertionError(f"{service} not healthy {minutes} min after the fault: {d.health()}")


def kill(d: Deployment, service: str) -> str:
    """SIGKILL the container (a lost machine); Docker's restart policy brings it back, else we start it."""
    cid = d.container(service)
    sh("docker", "kill", cid)
    time.sleep(15)
    info = json.loads(sh("docker", "inspect", cid).stdout)[0]["State"]
    how = "restarted by its restart policy"
    if not info["Running"]:
        sh("docker", "start", cid)
        how = "started again after 15 s (a killed container is not restarted by `unless-stopped`)"
    return f"{service} killed, {how}, healthy after {healthy(d, service):.0f} s"


def restart(d: Deployment, service: str) -> str:
    sh("docker", "restart", d.container(service), timeout=120)
    return f"{service} restarted, healthy after {healthy(d, service):.0f} s"


def stop_for(d: Deployment, service: str, seconds: int) -> str:
    cid = d.container(service)
    sh("docker", "stop", cid, timeout=120)
    time.sleep(seconds)
    sh("docker", "start", cid)
    return f"{service} stopped for {seconds} s, healthy {healthy(d, service):.0f} s after its start"


def cut_off(d: Deployment, service: str, seconds: int) -> str:
    """Out of the network for `seconds` (connections fail), then back under its service name."""
    cid, net = d.container(service), f"{PROJECT}_default"
    sh("docker", "network", "disconnect", net, cid)
    time.sleep(seconds)
    sh("docker", "network", "connect", "--alias", service, net, cid)
    return f"{service} off the network for {seconds} s"


def fill(d: Deployment, service: str = FULL_WORKER) -> str:
    out = []
    for m in WORK_MOUNTS:
        d.exec(service, "sh", "-c", f"fallocate -l $(( $(df -B1 --output=avail {m} | tail -1) )) {m}/.drill-fill "
                                    f"|| true; df -h --output=avail {m} | tail -1", user="50000")
        out.append(m)
    return f"{service}: {', '.join(out)} filled"


def free(d: Deployment, service: str = FULL_WORKER) -> None:
    for m in WORK_MOUNTS:
        d.exec(service, "rm", "-f", f"{m}/.drill-fill", user="50000")


def restarts(d: Deployment) -> dict[str, int]:
    """Docker's restart count per service: a service that died of a fault and came back by its restart policy."""
    out = {}
    for cid in d.compose("ps", "-q").stdout.split():
        info = json.loads(sh("docker", "inspect", cid).stdout)[0]
        out[info["Config"]["Labels"]["com.docker.compose.service"]] = info["RestartCount"]
    return out


def restarted(d: Deployment, before: dict[str, int]) -> str:
    came_back = sorted(s for s, n in restarts(d).items() if n > before.get(s, 0))
    return f"; restarted by their policy: {', '.join(came_back)}" if came_back else ""


# ---- observing the runs --------------------------------------------------------------------------------------------

def worker_of(d: Deployment, hostname: str) -> str:
    return next((w for w in WORKERS if d.hostname(w) == hostname), hostname)


def wait_task(d: Deployment, dag: str, run_id: str, task: str, states: tuple[str, ...], minutes: float) -> dict | None:
    """The task instance once it is in one of `states`; None if the run ended first or time ran out."""
    deadline = time.time() + minutes * 60
    while time.time() < deadline:
        ti = d.tasks(dag, run_id).get(task)
        if ti and ti["state"] in states:
            return ti
        if d.api("GET", f"/dags/{dag}/dagRuns/{run_id}")["state"] in ("success", "failed"):
            return None
        time.sleep(2)
    return None


def errors(d: Deployment, dag: str, run_id: str, ti: dict) -> list[str]:
    """The last error-looking line of each attempt of the task that did not succeed."""
    found = []
    for attempt in range(1, max(ti["try_number"], 1) + (0 if ti["state"] == "success" else 1)):
        try:
            text = json.loads(d.log(dag, run_id, ti, attempt))
        except Exception as exc:  # noqa: BLE001 (a log the API cannot serve is itself a finding)
            found.append(f"attempt {attempt}: log unavailable ({type(exc).__name__})")
            continue
        lines = []
        for e in text if isinstance(text, list) else [text]:
            if isinstance(e, dict):  # Airflow 3's structured log: an exception is in error_detail
                lines.append(e.get("event", ""))
                lines += [f"{x.get('exc_type')}: {x.get('exc_value')}" for x in e.get("error_detail") or []]
            else:
                lines.append(str(e))
        generic = ("Task failed with exception", "Command exited with return code", "::group::")
        bad = [ln for ln in lines if any(w in ln for w in ("Error", "error", "ERROR", "failed", "No space", "no space"))
               and not any(g in ln for g in generic)]
        if bad:
            found.append(f"attempt {attempt}: {bad[-1].strip()[:300]}")
        elif ti["state"] != "success" or attempt < ti["try_number"]:
            found.append(f"attempt {attempt}: no error in its log (the process was lost)")
    return found


def versions(d: Deployment) -> list[dict]:
    found = d.mlflow("model-versions/search?filter=name%3D%27deepfusion%27&max_results=200")
    return found.get("model_versions", [])


def champion_loads(d: Deployment) -> str:
    """Load models:/deepfusion@champion on a worker as categorize would (files complete, signature readable)."""
    code = ("import mlflow; m = mlflow.pyfunc.load_model('models:/deepfusion@champion'); "
            "print(m.metadata.run_id)")
    r = d.exec("worker-cpu-1", "python", "-c", code, check=False)
    return "loads" if r.returncode == 0 else f"does not load: {r.stderr.strip().splitlines()[-1][:200]}"


def registry_check(d: Deployment) -> tuple[bool, str]:
    vs = versions(d)
    recipes = [{t["key"]: t["value"] for t in v.get("tags", [])}.get("recipe_md5") for v in vs]
    dup = len(recipes) != len(set(recipes))
    loads = champion_loads(d)
    return (not dup and loads == "loads",
            f"{len(vs)} version(s), {len(set(recipes))} recipe(s){' (a recipe registered twice!)' if dup else ''}; "
            f"@champion {loads}")


# ---- the retrain drill -----------------------------------------------------------------------------------------------

RETRAIN_FAULTS = (  # (task that must be running, fault, how): one at a time, in the order the graph runs them
    ("train_baseline_image", "worker container killed (mid-training)", lambda d, w: kill(d, w)),
    ("train_fusion", "PostgreSQL restarted", lambda d, w: restart(d, "postgres")),
    ("train_retrieval", "Redis restarted", lambda d, w: restart(d, "redis")),
    ("stack", "artifact store unreachable for 60 s", lambda d, w: cut_off(d, "artifact-store", 60)),
    ("register", "MLflow server down for 60 s", lambda d, w: stop_for(d, "mlflow", 60)),
)


def trigger_retrain(d: Deployment, force: bool) -> str:
    conf = {"mode": "full", "epochs": 3, "force": force}
    return d.api("POST", "/dags/retrain/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]


def ensure_champion(d: Deployment) -> None:
    """The upload drills score with `@champion`: on a fresh deployment, a clean retrain registers one first."""
    if champion_loads(d) == "loads":
        return
    t0 = time.time()
    d.api("PATCH", "/dags/retrain", {"is_paused": False})
    run = d.wait_run("retrain", trigger_retrain(d, force=False), minutes=60)
    ok, registry = registry_check(d)
    print(f"drills: no champion yet: retrain {run['state']} in {time.time() - t0:.0f} s; {registry}", flush=True)
    if not ok:
        sys.exit("drills: no loadable @champion after the retrain: see the retrain run in the Airflow UI")


def drill_retrain(d: Deployment) -> list[Row]:
    rows: list[Row] = []
    before = {v["version"] for v in versions(d)}
    run_id, t_run = trigger_retrain(d, force=False), time.time()
    for task, fault, how in RETRAIN_FAULTS:
        row = Row(fault, f"retrain, task {task}")
        ti = wait_task(d, "retrain", run_id, task, ("running",), minutes=60)
        if ti is None:
            row.happened = "not reached: the run ended before the task ran"
            rows.append(row)
            continue
        t0, before = time.time(), restarts(d)
        row.details["fault"] = how(d, worker_of(d, ti["hostname"]))
        end = wait_task(d, "retrain", run_id, task, ("success", "failed", "upstream_failed"), minutes=60)
        row.details["fault"] += restarted(d, before)
        end = end or d.tasks("retrain", run_id)[task]
        row.recovery_s = round(time.time() - t0)
        row.details["task"] = {"state": end["state"], "tries": end["try_number"], "hosts": end["hostname"]}
        row.details["errors"] = errors(d, "retrain", run_id, end)
        row.ok = end["state"] == "success"
        row.happened = (f"{row.details['fault']}; {task} {end['state']} after {end['try_number']} attempt(s)"
                        + (f" ({row.details['errors'][0]})" if row.details["errors"] else ""))
        rows.append(row)
        print(f"drills: {fault}: {row.happened} [{row.recovery_s} s]", flush=True)
    run = d.wait_run("retrain", run_id, minutes=60)
    ok, registry = registry_check(d)
    new = sorted({v["version"] for v in versions(d)} - before)
    summary = f"run {run['state']} in {time.time() - t_run:.0f} s; new version(s) {new or 'none'}; {registry}"
    print(f"drills: retrain with faults: {summary}", flush=True)
    for row in rows:
        row.details["run"] = summary
        row.ok = row.ok and ok and run["state"] == "success"
    rows.append(drill_full_disk_retrain(d))
    return rows


def drill_full_disk_retrain(d: Deployment) -> Row:
    """A forced retrain (same data, params and code) with one CPU worker's disks full: its stages fail there and
    retry; whatever the run does, the equivalent model must not become a second version."""
    row = Row("a worker's disks full (runs, DVC cache, outputs)", "retrain (forced rerun of the same recipe)")
    before = versions(d)
    row.details["fault"] = fill(d)
    run_id, t0 = trigger_retrain(d, force=True), time.time()
    run = d.wait_run("retrain", run_id, minutes=60)
    tasks = d.tasks("retrain", run_id)
    full_host = d.hostname(FULL_WORKER)
    hit = {k: t for k, t in tasks.items() if full_host in (t.get("hostname") or "") or t["try_number"] > 1}
    row.details["tasks_on_full_worker"] = {k: [t["state"], t["try_number"]] for k, t in hit.items()}
    row.details["errors"] = {k: errors(d, "retrain", run_id, t) for k, t in tasks.items()
                             if t["try_number"] > 1 or t["state"] == "failed"}
    if run["state"] == "failed":
        # What an operator does: free the disk, clear the failed tasks; the run goes on from there.
        free(d)
        t_fix = time.time()
        d.api("POST", "/dags/retrain/clearTaskInstances",
              {"dag_run_id": run_id, "only_failed": True, "reset_dag_runs": True, "dry_run": False})
        run = d.wait_run("retrain", run_id, minutes=60)
        row.details["after_clear"] = f"{run['state']} {time.time() - t_fix:.0f} s after the failed tasks were cleared"
    else:
        free(d)
    row.recovery_s = round(time.time() - t0)
    ok, registry = registry_check(d)
    same = len(versions(d)) == len(before)
    row.ok = ok and same and run["state"] == "success"
    first = next((e[0] for e in row.details["errors"].values() if e), "")
    row.happened = (f"{len(hit)} task(s) hit the full worker or retried{f' ({first})' if first else ''}; run "
                    f"{run['state']}{' after clearing' if 'after_clear' in row.details else ''}; "
                    f"{'no new version (the same recipe)' if same else 'a NEW version'}; {registry}")
    print(f"drills: {row.fault}: {row.happened} [{row.recovery_s} s]", flush=True)
    return row


# ---- uploads: the categorize drill and the load drill ----------------------------------------------------------------

def land(d: Deployment, name: str, n: int = 40, seed: int = 0, start_id: int = 80_000) -> None:
    """An upload as the upload service makes it: files first, the READY marker last."""
    land_many(d, [(name, n, seed, start_id)])


def land_many(d: Deployment, batches: list[tuple[str, int, int, int]]) -> None:
    """Uploads of (name, products, seed, first id): every batch's files in one stream, then every READY marker in
    another, so many batches land within seconds and none is ready before its files are complete."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files, marks = Path(tmp) / "files", Path(tmp) / "marks"
        for name, n, seed, start_id in batches:
            make_catalog(files / name, n=n, seed=seed, start_id=start_id, labeled=False)
            (marks / name).mkdir(parents=True)
            (marks / name / "_READY").write_text("")
        for folder in (files, marks):
            d.upload("worker-cpu-1", folder, contents=True)


BATCH_CHECK = r"""
import json, sys
from pathlib import Path
out = {}
for name in sys.argv[1:]:
    p = Path('/opt/deepfusion/landing/_state') / f'{name}.json'
    s = json.loads(p.read_text()) if p.is_file() else {}
    states = [h['state'] for h in s.get('history', [])]
    out[name] = {'state': s.get('state'), 'history': states, 'predictions': s.get('predictions', '')}
print(json.dumps(out))
"""


def batch_states(d: Deployment, names: list[str]) -> dict[str, dict]:
    return json.loads(d.exec("worker-cpu-1", "python", "-c", BATCH_CHECK, *names).stdout)


def prediction_copies(d: Deployment, names: list[str]) -> dict[str, int]:
    """In how many workers' outputs each batch's predictions exist (exactly one: scored and merged once)."""
    count = dict.fromkeys(names, 0)
    for w in WORKERS:
        listed = d.exec(w, "sh", "-c", "ls /opt/deepfusion/artifacts/categorize 2>/dev/null || true").stdout.split()
        for name in names:
            count[name] += name in listed
    return count


def exactly_once(d: Deployment, names: list[str]) -> tuple[list[str], dict]:
    """Batches whose life was not validated -> reported -> categorized exactly once, with one predictions folder."""
    states, copies = batch_states(d, names), prediction_copies(d, names)
    wrong = [n for n in names if states[n]["state"] != "categorized" or copies[n] != 1
             or [h for h in states[n]["history"] if h in ("reported", "categorized")] != ["reported", "categorized"]]
    return wrong, {n: {**states[n], "copies": copies[n]} for n in wrong}


def wait_batches(d: Deployment, names: list[str], minutes: float) -> float:
    t0, deadline = time.time(), time.time() + minutes * 60
    while time.time() < deadline:
        states = batch_states(d, names)
        if all(s["state"] in ("categorized", "failed") for s in states.values()):
            break
        time.sleep(5)
    return time.time() - t0


def dag_runs(d: Deployment, dag: str) -> list[dict]:
    return d.api("GET", f"/dags/{dag}/dagRuns?limit=200&order_by=-start_date")["dag_runs"]


def running_task(d: Deployment, dag: str, task: str, since: set[str], states: tuple[str, ...],
                 minutes: float) -> tuple[str, dict] | None:
    """(run id, task instance) of `task` in one of `states` in a run of `dag` not in `since`. A task of a second
    or two is caught while queued (the broker holds its message then), never reliably while running."""
    deadline = time.time() + minutes * 60
    while time.time() < deadline:
        for run in dag_runs(d, dag):
            if run["dag_run_id"] in since:
                continue
            for key, ti in d.tasks(dag, run["dag_run_id"]).items():
                if key.split("[")[0] == task and ti["state"] in states:
                    return run["dag_run_id"], ti
        time.sleep(0.5)
    return None


RUNNING, WAITING = ("running",), ("scheduled", "queued", "running")
CATEGORIZE_FAULTS = (  # (DAG, task, in which states the fault hits it, fault, how)
    ("categorize", "score_shards", RUNNING, "worker container killed (mid-scoring)", lambda d, w: kill(d, w)),
    ("catalog_drift", "report_batches", RUNNING, "PostgreSQL restarted", lambda d, w: restart(d, "postgres")),
    ("categorize", "score_shards", WAITING, "Redis restarted", lambda d, w: restart(d, "redis")),
    ("categorize", "model", WAITING, "MLflow server down for 60 s", lambda d, w: stop_for(d, "mlflow", 60)),
    ("catalog_drift", "report_batches", RUNNING, "artifact store unreachable for 60 s",
     lambda d, w: cut_off(d, "artifact-store", 60)),
)


def drill_categorize(d: Deployment, only: str = "") -> list[Row]:
    rows = []
    for k, (dag, task, states, fault, how) in enumerate(CATEGORIZE_FAULTS):
        if only and not any(o.strip().lower() in fault.lower() for o in only.split(",")):
            continue
        name = f"drill-{k}-{int(time.time())}"
        row = Row(fault, f"{dag}, task {task} ({' or '.join(states)})")
        since = {r["dag_run_id"] for r in dag_runs(d, dag)}
        land(d, name, seed=k, start_id=80_000 + 1000 * k)
        found = running_task(d, dag, task, since, states, minutes=15)
        t0, before = time.time(), restarts(d)
        if found is None:
            row.happened = f"not reached: the task was never {' or '.join(states)} within 15 min"
        else:
            run_id, ti = found
            row.details["fault"] = how(d, worker_of(d, ti["hostname"]) if ti["hostname"] else "")
        waited = wait_batches(d, [name], minutes=30)
        row.recovery_s = round(time.time() - t0)
        if found:
            row.details["fault"] += restarted(d, before)
        wrong, detail = exactly_once(d, [name])
        state = batch_states(d, [name])[name]
        row.details["batch"] = state
        if found:
            run = d.wait_run(dag, run_id, minutes=20)
            ti = d.tasks(dag, run_id)[ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")]
            row.details["errors"] = errors(d, dag, run_id, ti)
            row.happened = (f"{row.details['fault']}; {task} {ti['state']} after {ti['try_number']} attempt(s)"
                            + (f" ({row.details['errors'][0]})" if row.details["errors"] else "")
                            + f"; the {dag} run {run['state']}; batch {state['state']} {waited:.0f} s later, history "
                            + " > ".join(state["history"]))
        row.ok = not wrong
        rows.append(row)
        print(f"drills: {fault}: {row.happened} [{row.recovery_s} s]{'' if row.ok else ' NOT EXACTLY ONCE'}",
              flush=True)
    if not only or any(o.strip().lower() in "a worker's disks full" for o in only.split(",")):
        rows.append(drill_full_disk_categorize(d))
    return rows


def drill_full_disk_categorize(d: Deployment) -> Row:
    row = Row("a worker's disks full (runs, DVC cache, outputs)", "catalog_drift and categorize of one upload")
    name = f"drill-full-{int(time.time())}"
    row.details["fault"] = fill(d)
    t0 = time.time()
    land(d, name, seed=9, start_id=89_000)
    waited = wait_batches(d, [name], minutes=20)
    state = batch_states(d, [name])[name]
    if state["state"] != "categorized":
        # The operator frees the disk; the hourly fallback (here: a manual trigger) picks the batch up again.
        free(d)
        d.api("POST", "/dags/catalog_drift/dagRuns", {"logical_date": None})
        waited = wait_batches(d, [name], minutes=20)
        row.details["after_free"] = True
        state = batch_states(d, [name])[name]
    else:
        free(d)
    row.recovery_s = round(time.time() - t0)
    wrong, detail = exactly_once(d, [name])
    row.ok = not wrong
    row.details["batch"] = state
    how = "after the disk was freed and catalog_drift ran again" if row.details.get("after_free") else "without help"
    row.happened = f"batch {state['state']} {how} ({waited:.0f} s), history {' > '.join(state['history'])}"
    print(f"drills: {row.fault}: {row.happened} [{row.recovery_s} s]{'' if row.ok else ' NOT EXACTLY ONCE'}",
          flush=True)
    return row


MEMORY = r"""docker stats --no-stream --format '{{.Name}} {{.MemUsage}}'"""


def memory_sample(d: Deployment) -> dict[str, float]:
    """MiB in use per service now."""
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    out = {}
    for line in sh("sh", "-c", MEMORY).stdout.splitlines():
        name, used = line.split()[0], line.split()[1]
        if not name.startswith(PROJECT):
            continue
        unit = next(u for u in ("GiB", "MiB", "KiB", "B") if used.endswith(u))
        out[name.split("_")[1]] = float(used[: -len(unit)]) * units[unit]
    return out


def drill_load(d: Deployment, n: int) -> list[Row]:
    """`n` batches land within a minute: each reported and categorized exactly once; peak memory per service, and
    no container killed for memory or restarted."""
    row = Row(f"{n} batches land within a minute", "catalog_drift and categorize")
    restarts0 = {s: json.loads(sh("docker", "inspect", d.container(s)).stdout)[0]["RestartCount"]
                 for s in d.health()}
    names = [f"load-{k:03d}-{int(time.time())}" for k in range(n)]
    t0 = time.time()
    land_many(d, [(name, 40, 100 + k, 100_000 + 100 * k) for k, name in enumerate(names)])
    landed = time.time() - t0
    peak: dict[str, float] = {}
    deadline = time.time() + 120 * 60
    while time.time() < deadline:
        for s, mib in memory_sample(d).items():
            peak[s] = max(peak.get(s, 0), mib)
        states = batch_states(d, names)
        if all(s["state"] in ("categorized", "failed") for s in states.values()):
            break
        time.sleep(15)
    total = time.time() - t0
    wrong, detail = exactly_once(d, names)
    after = {s: json.loads(sh("docker", "inspect", d.container(s)).stdout)[0] for s in d.health()}
    oom = [s for s, i in after.items() if i["State"].get("OOMKilled")]
    restarted = [s for s, i in after.items() if i["RestartCount"] != restarts0.get(s, 0)]
    drift_runs = [r for r in dag_runs(d, "catalog_drift") if r["start_date"] and r["start_date"] >= "2000"]
    row.recovery_s = round(total)
    row.ok = not wrong and not oom and not restarted
    row.details = {"landed_s": round(landed), "peak_mib": {k: round(v) for k, v in sorted(peak.items())},
                   "wrong": detail, "oom": oom, "restarted": restarted, "drift_runs": len(drift_runs)}
    top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(peak.items(), key=lambda kv: -kv[1])[:6])
    row.happened = (f"landed in {landed:.0f} s; {n - len(wrong)} of {n} reported and categorized exactly once in "
                    f"{total:.0f} s; OOM-killed: {oom or 'none'}; restarted: {restarted or 'none'}; peak MiB {top}")
    print(f"drills: {row.fault}: {row.happened}", flush=True)
    return [row]


def table(rows: list[Row]) -> str:
    lines = ["| fault | during | what happened | recovered after | invariants |", "|---|---|---|---|---|"]
    for r in rows:
        rec = f"{r.recovery_s} s" if r.recovery_s is not None else "—"
        lines.append(f"| {r.fault} | {r.during} | {r.happened} | {rec} | {'held' if r.ok else 'BROKEN'} |")
    return "\n".join(lines)


def record(rows: list[Row], what: str) -> None:
    path = STATE / "drills.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    new = {r.fault for r in rows}  # a rerun of some faults (--only) replaces only their rows
    kept[what] = [r for r in kept.get(what, []) if r["fault"] not in new] + [asdict(r) for r in rows]
    path.write_text(json.dumps(kept, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["up", "retrain", "categorize", "load", "down", "all"])
    ap.add_argument("--batches", type=int, default=100, help="load drill: batches landing within a minute")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--only", default="", help="categorize drill: only the faults whose name contains one of these "
                    "comma-separated words")
    args = ap.parse_args()
    if args.what in ("up", "all"):
        cmd_up()
    rows: list[Row] = []
    d = deployment() if args.what != "up" else None
    for what, drill in (("retrain", drill_retrain), ("categorize", lambda d: drill_categorize(d, args.only)),
                        ("load", lambda d: drill_load(d, args.batches))):
        if args.what in (what, "all"):
            if what != "retrain":
                ensure_champion(d)
            # The synthetic uploads drift from the tiny training catalog, so each drift report requests a retrain:
            # paused while uploads are drilled, so that the figures are categorization's alone.
            d.api("PATCH", "/dags/retrain", {"is_paused": what != "retrain"})
            done = drill(d)
            record(done, what)
            rows += done
    if rows:
        print(table(rows) if args.markdown else "\n".join(f"{r.fault} | {r.during} | {r.happened} | "
                                                           f"{r.recovery_s} s | {'held' if r.ok else 'BROKEN'}"
                                                           for r in rows))
    if args.what in ("down", "all"):
        cmd_down()
    if any(not r.ok for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
