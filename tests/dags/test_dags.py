"""DAG structure (DagBag) and end-to-end runs with dag.test() against a fresh metadata DB."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import load_raw
from components.orchestration.run_workspace import current
from tests.conftest import ROOT, dag_workspace, make_catalog


@pytest.fixture(scope="module")
def bag(airflow_env):
    from airflow.dag_processing.dagbag import DagBag

    b = DagBag(dag_folder=str(ROOT / "dags"))
    assert b.import_errors == {}
    return b


def test_dags_import_and_exist(bag):
    assert set(bag.dags) == {"retrain", "catalog_drift", "categorize"}
    for dag in bag.dags.values():
        assert dag.catchup is False and dag.max_active_runs == 1
        # Deterministic failures are not retried; everything else may meet a lost worker or a network blip.
        assert all(t.retries >= 1 for t in dag.tasks if t.task_id != "report_batches")
        assert all(t.execution_timeout is not None for t in dag.tasks)


@pytest.mark.parametrize("now", ["2026-12-06T03:09:00", "2026-12-06T19:00:00", "2026-12-09T12:00:00",
                                 "2026-12-05T23:59:00"])
def test_retrain_does_not_run_at_first_start(bag, monkeypatch, now):
    """Whenever the DAG first appears (a Sunday minutes after 03:00 included: Airflow's run_immediately=False
    still ran that one), its first scheduled run is the next Sunday 03:00, never one that already passed."""
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    clock = pendulum.parse(now, tz="UTC")
    monkeypatch.setattr(trigger, "utcnow", lambda: clock)
    dag = bag.dags["retrain"]
    assert dag.start_date is None
    first = coerce_to_core_timetable(dag.timetable).next_dagrun_info(last_automated_data_interval=None,
                                           restriction=TimeRestriction(earliest=None, latest=None, catchup=False))
    assert first.run_after > clock and first.run_after.day_of_week == pendulum.SUNDAY
    assert (first.run_after.hour, first.run_after.minute) == (3, 0)
    assert first.run_after - clock <= pendulum.duration(days=7)
    assert dag.get_task("train_fusion").execution_timeout > dag.get_task("ingest").execution_timeout


def test_retrain_runs_independent_stages_in_parallel_and_routes_training_to_gpu(bag):
    from components.orchestration import stage_graph

    dag = bag.dags["retrain"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expected = []
    for name, stage in stages.items():
        items = stage.get("matrix", {}).get("model")
        expected += [f"{name}_{i}" for i in items] if items else [name]
    graph = stage_graph.read(ROOT)  # checked against DVC's own graph in tests/unit/test_stage_graph.py
    tid = {s: s.replace("@", "_") for s in graph}
    assert sorted(tid.values()) == sorted(expected)
    for s, ups in graph.items():
        assert dag.get_task(tid[s]).upstream_task_ids == ({tid[u] for u in ups} or {"configure"}), s
    # The four baselines wait for the audit only, side by side; the publish step waits for the last stage.
    for m in ("tfidf", "image", "text", "metadata"):
        assert dag.get_task(f"train_baseline_{m}").upstream_task_ids == {"audit"}
    assert dag.get_task("publish").upstream_task_ids == {"evaluate"}
    # A stage task starts from the merged locks of the stages it needs, in its own folder of the run.
    env = dag.get_task("train_fusion").env  # every stage before it: each task hands on its own entry only
    assert "'train_baseline_image'" in env["RUN_LOCK"] and "'ingest'" in env["RUN_LOCK"]
    assert "'train_baseline_text'" not in env["RUN_LOCK"] and env["RUN_STAGE"] == "train_fusion"
    assert "'audit'" in dag.get_task("train_baseline_text").env["RUN_LOCK"]
    for t in ("train_baseline_image", "train_fusion"):
        task = dag.get_task(t)
        assert task.queue == "gpu" and task.pool == "gpu_pool"
    assert dag.get_task("train_baseline_tfidf").queue != "gpu"


def test_retrain_form_params_and_triggers(bag):
    dag = bag.dags["retrain"]
    p = dag.params
    assert p["mode"] == "full" and p["epochs"] == 0 and p["force"] is False and p["backbone"] == ""
    assert "register_only" in dag.params.get_param("mode").schema["enum"]
    assert "deepfusion_retrain_request" in repr(dag.timetable)
    cat = bag.dags["categorize"]
    assert "deepfusion_new_catalog" in repr(cat.timetable)


def test_run_overrides_really_change_params(tmp_path):
    from components.orchestration.run_params import apply_overrides, run_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path, run_overrides({"backbone": "resnet10t", "epochs": 3, "mode": "full"}))
    raw = load_raw(tmp_path / "params.yaml")
    assert raw["model"]["backbone"] == "resnet10t" and raw["train_fusion"]["train"]["epochs"] == 3
    assert raw["model"]["backbone_channels"] == []  # the default's half widths would not fit another backbone
    assert raw["model"]["stem_width"] == 0  # nor its narrowed stem
    assert run_overrides({"backbone": "", "epochs": 0}) == {}


# ---- end to end: dag.test() in a subprocess, against a migrated throw-away DB, on a tiny workspace ----

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return dag_workspace(tmp_path_factory.mktemp("dagws"))


def run_dag(ws: Path, dag_id: str, conf: dict | None = None, env_extra: dict | None = None) -> dict:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "DEEPFUSION_HOME": str(ws), "DEEPFUSION_BIN": str(bindir),
           "PATH": f"{bindir}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "dag_runner.py"), dag_id,
                           json.dumps(conf or {})], env=env, capture_output=True, text=True, timeout=1500)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("DAG_RESULT ")]
    assert line, f"dag.test gave no result (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}"
    result = json.loads(line[-1][len("DAG_RESULT "):])
    result["log"] = (proc.stdout + proc.stderr)[-5000:]
    return result


@pytest.fixture(scope="module")
def retrained(airflow_db, workspace) -> dict:
    """The workspace after one full retrain run (a fixture, so no test relies on another having run)."""
    return run_dag(workspace, "retrain", {"mode": "full", "epochs": 8})


@pytest.mark.slow
def test_retrain_end_to_end_registers_and_promotes(retrained, workspace):
    r = retrained
    assert r["state"].endswith("success"), r["log"]
    for tid in ("ingest", "train_fusion", "evaluate", "publish", "register", "promote", "announce_champion"):
        assert r["tasks"][tid].endswith("success"), (tid, r["tasks"])
    # The form changed the run, in the run's own workspace; the project's tracked files are untouched.
    assert load_raw(workspace / "params.yaml")["train_fusion"]["train"]["epochs"] != 8
    assert not (workspace / "artifacts").exists() and not (workspace / "dvc.lock").exists()
    run = current(workspace)
    assert run.parent == workspace / "runs" and load_raw(run / "params.yaml")["train_fusion"]["train"]["epochs"] == 8
    assert (run / "artifacts/evaluate/metrics.json").is_file()
    assert json.loads((run / "run.json").read_text())["overrides"]["train_fusion"]["train"]["epochs"] == 8
    # promote_only reruns just the gate: the same model is already champion.
    r = run_dag(workspace, "retrain", {"mode": "promote_only"})
    assert r["state"].endswith("success") and r["tasks"]["ingest"].endswith("skipped")
    assert r["tasks"]["announce_champion"].endswith("skipped")


@pytest.mark.slow
def test_catalog_drift_flags_a_drifted_batch_then_is_idempotent(retrained, workspace):
    landing = workspace / "landing"
    new = make_catalog(landing / "2016-01", n=120, seed=9, start_id=9000)
    lines = (new / "styles.csv").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ",Watches," in ln or ",Jeans," in ln]
    (new / "styles.csv").write_text("\n".join(keep) + "\n")
    (new / "_READY").write_text("")  # the uploader's last step
    r = run_dag(workspace, "catalog_drift")
    assert r["state"].endswith("success"), r["log"]
    assert r["tasks"]["request_retrain"].endswith("success")  # emits RETRAIN_REQUEST -> retrain's schedule
    assert r["tasks"]["announce_batches"].endswith("success")  # emits NEW_CATALOG -> categorize
    state = json.loads((landing / "_state" / "2016-01.json").read_text())
    assert state["drift_detected"] is True and Path(state["report"], "report.html").is_file()
    assert state["state"] == "reported" and (landing / "2016-01").is_dir()  # done only once categorized
    points = [json.loads(f.read_text()) for f in (workspace / "artifacts/monitoring").glob("*/snapshots/*.json")]
    assert "2016-01" in {p["metadata"]["batch"] for p in points if p["tags"] == ["drift"]}  # on the dashboard
    again = run_dag(workspace, "catalog_drift")
    assert again["state"].endswith("success") and not any(k.startswith("report_batches[") for k in again["tasks"])
    # Not categorized yet (categorize is another DAG): announced again, without a second report.
    assert again["tasks"]["announce_batches"].endswith("success")


@pytest.mark.slow
def test_one_failing_drift_report_does_not_hold_back_the_other_batches(retrained, workspace):
    landing = workspace / "landing"
    for name, seed in (("2016-02", 12), ("2016-03", 13)):
        make_catalog(landing / name, n=60, seed=seed, start_id=10_000 * seed)
        (landing / name / "_READY").write_text("")
    blocker = workspace / "artifacts" / "drift" / "2016-03"  # a folder drift may not replace: its report fails
    blocker.mkdir(parents=True)
    (blocker / "notes.txt").write_text("not a report")
    r = run_dag(workspace, "catalog_drift")
    assert r["state"].endswith("failed") and r["tasks"]["check_failures"].endswith("failed")
    assert r["tasks"]["announce_batches"].endswith("success")  # 2016-02 announced all the same
    state = {b: json.loads((landing / "_state" / f"{b}.json").read_text())["state"] for b in ("2016-02", "2016-03")}
    assert state == {"2016-02": "reported", "2016-03": "validated"}
    assert (blocker / "notes.txt").read_text() == "not a report"
    shutil.rmtree(blocker)
    again = run_dag(workspace, "catalog_drift")  # the next run picks up only the batch that failed
    assert again["state"].endswith("success")
    assert json.loads((landing / "_state" / "2016-03.json").read_text())["state"] == "reported"
    assert [k for k in again["tasks"] if k.startswith("report_batches[")] == ["report_batches[0]"]
    history = json.loads((landing / "_state" / "2016-02.json").read_text())["history"]
    assert [h["state"] for h in history] == ["validated", "reported"]  # reported once: not in the second run's group


def upload(landing: Path, name: str, seed: int, n: int = 60, only: tuple[str, ...] = ()) -> Path:
    """A batch as the uploader leaves it: the export, then _READY. `only`: keep just these article types."""
    new = make_catalog(landing / name, n=n, seed=seed, start_id=10_000 * seed)
    if only:
        lines = (new / "styles.csv").read_text().splitlines()
        keep = [lines[0]] + [ln for ln in lines[1:] if any(f",{t}," in ln for t in only)]
        (new / "styles.csv").write_text("\n".join(keep) + "\n")
    (new / "_READY").write_text("")
    return new


def summary_of(landing: Path, name: str) -> dict:
    state = json.loads((landing / "_state" / f"{name}.json").read_text())
    return json.loads(Path(state["report"], "summary.json").read_text())


@pytest.mark.slow
def test_catalog_drift_reports_when_held_out_batches_lack_a_signal(retrained, workspace):
    """Most held-out products without a photo: many null batches have too few photos to measure the image
    signals. The run still reports, and names those signals not measurable with the reason (issue 37: the
    calibration crashed when a null batch lacked a signal)."""
    landing = workspace / "landing"
    upload(landing, "2016-04", seed=14)
    first = run_dag(workspace, "catalog_drift")  # builds (or reuses) the described reference and null pool
    assert first["state"].endswith("success"), first["log"]
    pool_file = max((workspace / "artifacts" / "drift_null").glob("*/pool.parquet"), key=lambda p: p.stat().st_mtime)
    saved = pool_file.read_bytes()
    try:
        pool = pd.read_parquet(pool_file)
        gone = pd.Series(range(len(pool))) % 8 < 5  # 5 in 8 held-out products lose their photo
        pool.loc[gone, ["image_brightness", "image_white_share"]] = float("nan")
        pool.loc[gone, [c for c in pool.columns if c.startswith("img_")]] = 0.0  # as `describe` has it
        pool.to_parquet(pool_file, index=False)
        for old in pool_file.parent.glob("null_*.json"):
            old.unlink()
        upload(landing, "2016-05", seed=15)
        r = run_dag(workspace, "catalog_drift")
        assert r["state"].endswith("success"), r["log"]
        summary = summary_of(landing, "2016-05")
        null = json.loads(next(pool_file.parent.glob("null_v2_*.json")).read_text())["batches_values"]
        lacking = sum("image_embedding" not in rec for rec in null)
        assert 0 < lacking < len(null)  # the case of the issue: some null batches lack the signal
        assert "held-out null batches" in summary["not_measurable"]["image_embedding"]
        assert all(s["null_batches"] >= 0.9 * len(null) for s in summary["signals"])
        assert "image_embedding" not in {s["signal"] for s in summary["signals"]}
    finally:
        pool_file.write_bytes(saved)
        for old in pool_file.parent.glob("null_*.json"):
            old.unlink()


@pytest.mark.slow
def test_catalog_drift_runs_under_forced_bf16_inference(retrained, workspace):
    """The bf16 path a CPU with AVX-512 BF16 or AMX takes on its own, forced here (emulated where the CPU lacks
    it): the drift DAG describes, calibrates and judges in bf16, with a null of its own precision."""
    landing = workspace / "landing"
    upload(landing, "2016-06", seed=16, n=120, only=("Watches", "Jeans"))
    r = run_dag(workspace, "catalog_drift", env_extra={"DEEPFUSION_CPU_PRECISION": "bf16"})
    assert r["state"].endswith("success"), r["log"]
    summary = summary_of(landing, "2016-06")
    assert summary["drift_detected"] is True
    keys = [json.loads(k.read_text()) for k in (workspace / "artifacts" / "drift_null").glob("*/key.json")]
    assert "cpu-bf16" in {k["precision"] for k in keys}


@pytest.mark.slow
def test_bad_batch_fails_the_run_and_is_kept(airflow_db, workspace):
    landing = workspace / "landing"
    bad = landing / "broken"
    bad.mkdir(parents=True)
    (bad / "styles.csv").write_text("sku,name\n1,x\n")
    (bad / "_READY").write_text("")
    r = run_dag(workspace, "catalog_drift")
    assert r["state"].endswith("failed")
    kept = landing / "_failed" / "broken"
    assert (kept / "styles.csv").is_file()
    assert "missing column" in json.loads((kept / "validation_report.json").read_text())["failures"][0]


@pytest.mark.slow
def test_categorize_writes_predictions_and_review_queue(retrained, workspace, tmp_path):
    make_catalog(workspace / "landing" / "handbatch", n=20, seed=11, labeled=False, start_id=8000)
    r = run_dag(workspace, "categorize", {"batch": "handbatch"})  # a name in the landing area, not a path
    assert r["state"].endswith("success"), r["log"]
    out = workspace / "artifacts/categorize/handbatch"
    assert json.loads((out / "model.json").read_text())["model"].startswith("models:/")  # the version, pinned
    pred = pd.read_csv(out / "predictions.csv")
    review = pd.read_csv(out / "review_queue.csv")
    assert len(pred) == 20 and set(review["id"]) <= set(pred["id"])
    # Done only now: the batch's state says so and its folder moved out of the landing area.
    state = json.loads((workspace / "landing" / "_state" / "handbatch.json").read_text())
    assert state["state"] == "categorized" and state["predictions"] == str(out)
    area = workspace / "landing"
    assert (area / "_done" / "handbatch").is_dir() and not (area / "handbatch").exists()
    assert set(review["id"]) >= set(pred.loc[pred["status"] == "corrupt_image", "id"])
    # ...and the same products wait in the review station's categorize queue, least confident first, with the
    # archived batch's photos.
    from components.config import params_from_dict
    from components.review.store import Store

    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    store = Store(f"sqlite:///{workspace / params_from_dict(raw).paths.review / 'review.db'}")
    queued = [store.item(i) for i in range(1, len(review) + 1)]
    assert {q.product_id for q in queued} == set(review["id"].astype(str)) and {q.queue for q in queued} == {
        "categorize"}
    assert all(q.product["image_root"] == str((area / "_done" / "handbatch").resolve()) for q in queued)


@pytest.mark.slow
def test_categorize_refuses_a_batch_outside_the_landing_area(retrained, workspace, tmp_path):
    """Issue 39.9: the form's `batch` once took any readable path, and a name of `..` wrote one folder up."""
    outside = make_catalog(tmp_path / "elsewhere", n=12, seed=12, labeled=False, start_id=8100)
    for bad in (str(outside), "..", "../elsewhere"):
        r = run_dag(workspace, "categorize", {"batch": bad})
        assert not r["state"].endswith("success"), (bad, r["state"])
    assert not (workspace / "artifacts" / "categorize" / "elsewhere").exists()
    assert not (workspace / "artifacts" / "predictions.csv").exists()
