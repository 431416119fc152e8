"""Run-scoped workspaces: a retrain run's params never touch the project's tracked files."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.config import ConfigError, load_raw
from components.lifecycle.provenance import data_md5, run_overrides
from components.orchestration import run_params, run_workspace
from tests.conftest import ROOT

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "styles.csv").write_text("id\n1\n")
    for name in ("dvc.yaml", "params.yaml", "params.gpu.yaml"):
        shutil.copy(ROOT / name, home / name)
    (home / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (home / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    os.symlink(ROOT / "components", home / "components")
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=home, check=True)
    subprocess.run([DVC, "remote", "add", "-q", "artifacts", "../remote"], cwd=home, check=True)
    return home


def snapshot(home: Path) -> dict[str, bytes]:
    return {n: (home / n).read_bytes() for n in ("params.yaml", "dvc.lock", ".dvc/config")}


def test_overrides_live_in_the_run_workspace_only(project, monkeypatch):
    before = snapshot(project)
    ws = run_workspace.materialize(project, "manual__2026-11-30T19:00:00+00:00", {"train_fusion": {"train": {
        "epochs": 1}}})
    assert snapshot(project) == before
    assert ws.parent == project / "runs" and ":" not in ws.name
    assert load_raw(ws / "params.yaml")["train_fusion"]["train"]["epochs"] == 1
    assert load_raw(ws / "params.yaml")["paths"]["mlflow_db"] == str(project.resolve() / "mlflow.db")  # one store
    assert (ws / "data").resolve() == (project / "data").resolve()  # the catalog is linked, not copied
    monkeypatch.chdir(ws)
    assert run_overrides() == {"train_fusion": {"train": {"epochs": 1}}} and data_md5() == "abc123.dir"
    # The project's remotes and cache, with relative URLs made absolute (`dvc remote add` in home stored
    # ../remote as ../../remote, relative to home/.dvc).
    cfg = (ws / ".dvc" / "config").read_text()
    assert str((project.parent / "remote").resolve()) in cfg and str((project / ".dvc" / "cache").resolve()) in cfg
    assert run_workspace.has_remote(ws, "artifacts")
    # Never symlinks out of the cache (compose keeps the cache on its own volume; MLflow refuses a model file
    # that resolves outside its folder).
    r = subprocess.run([DVC, "config", "cache.type"], cwd=ws, capture_output=True, text=True, check=True)
    assert "symlink" not in r.stdout and "hardlink" in r.stdout and "copy" in r.stdout
    r = subprocess.run([DVC, "remote", "list"], cwd=ws, capture_output=True, text=True, check=True)
    assert "artifacts" in r.stdout


def test_the_run_uses_the_cache_the_user_configured(project, tmp_path):
    shared = tmp_path / "shared-cache"
    subprocess.run([DVC, "cache", "dir", str(shared)], cwd=project, check=True)
    subprocess.run([DVC, "config", "--local", "cache.type", "reflink,copy"], cwd=project, check=True)
    ws = run_workspace.materialize(project, "r1", {})
    r = subprocess.run([DVC, "cache", "dir"], cwd=ws, capture_output=True, text=True, check=True)
    assert Path(r.stdout.strip()).resolve() == shared.resolve()
    r = subprocess.run([DVC, "config", "cache.type"], cwd=ws, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "reflink,copy"  # config.local counts, as in the project


def test_the_run_lock_travels_and_a_second_materialize_keeps_the_workspace(project):
    ws = run_workspace.materialize(project, "r1", {})
    (ws / "marker").write_text("made by the first task")
    lock = base64.b64encode(b"schema: '2.0'\nstages:\n  ingest: {cmd: x}\n").decode()
    again = run_workspace.materialize(project, "r1", {}, lock)
    assert again == ws and (ws / "marker").is_file()
    assert b"ingest" in (ws / "dvc.lock").read_bytes() and run_workspace.encoded_lock(ws) == lock
    assert b"ingest" not in (project / "dvc.lock").read_bytes()


def test_a_bad_override_fails_before_anything_is_made(project):
    with pytest.raises(ConfigError, match="epochs"):
        run_workspace.materialize(project, "bad", {"train_fusion": {"train": {"epochs": "many"}}})
    assert not (project / "runs" / "bad").exists()


def test_latest_and_prune(project):
    made = [run_workspace.materialize(project, f"r{i}", {}) for i in range(6)]
    for i, ws in enumerate(made):
        os.utime(ws, (1000 + i, 1000 + i))
    run_workspace.mark_latest(project, made[0])
    assert run_workspace.current(project) == made[0].resolve()
    removed = run_workspace.prune(project, keep=2, current="r1")
    kept = {p.name for p in (project / "runs").iterdir()}
    assert kept == {"latest", "r0", "r1", "r4", "r5"} and len(removed) == 2
    shutil.rmtree(project / "runs")
    assert run_workspace.current(project) == project  # no run yet: the project's own result


def test_gpu_profile_applies_only_where_cuda_is_visible(project, monkeypatch):
    assert run_params.device_profile(project) == {}  # this CPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    merged = run_params.run_params(project, {"epochs": 3})
    assert merged["model"]["backbone"] == load_raw(project / "params.gpu.yaml")["model"]["backbone"]
    assert merged["train_fusion"]["train"]["epochs"] == 3  # the form wins over the profile
    assert merged["train_fusion"]["train"]["device"] == "cuda"


def test_spec_from_env_names_the_problem(monkeypatch):
    monkeypatch.setenv("RUN_SPEC", json.dumps({"run_id": "r", "overrides": {}}))
    assert run_workspace.spec_from_env() == {"run_id": "r", "overrides": {}}
    monkeypatch.setenv("RUN_SPEC", "None")
    with pytest.raises(run_workspace.WorkspaceError, match="RUN_SPEC"):
        run_workspace.spec_from_env()


@pytest.mark.parametrize("run_id", ["..", ".", "../../etc", "a/b", "/abs", "x" * 1000, "", "runs", "latest/..",
                                    "manual__2026-11-30T19:00:00+00:00"])
def test_any_run_id_maps_to_its_own_folder_under_runs(tmp_path, run_id):
    """Issue 39.10: a run id of `..` once mapped the run to the project root (its tracked dvc.lock overwritten)."""
    folder = run_workspace.run_folder(tmp_path, run_id)
    assert folder.parent == tmp_path / "runs" and folder.name not in ("", ".", "..")
    assert "/" not in folder.name and len(folder.name) <= 91
    assert folder.resolve().is_relative_to((tmp_path / "runs").resolve())


def test_distinct_run_ids_never_share_a_folder(tmp_path):
    ids = ["a:b", "a+b", "a_b", "x" * 200 + "1", "x" * 200 + "2"]
    assert len({run_workspace.run_folder(tmp_path, i) for i in ids}) == len(ids)


def lock_b64(stages: dict) -> str:
    import yaml

    return base64.b64encode(yaml.safe_dump({"schema": "2.0", "stages": stages}).encode()).decode()


def test_parallel_stages_get_their_own_folders_and_their_locks_merge(project):
    import yaml

    up = {"audit": {"cmd": "a", "outs": [{"path": "x", "md5": "1"}]}}
    left = lock_b64({**up, "train_baseline@tfidf": {"cmd": "t", "outs": [{"path": "t", "md5": "2"}]}})
    right = lock_b64({**up, "train_baseline@image": {"cmd": "i", "outs": [{"path": "i", "md5": "3"}]}})
    a = run_workspace.materialize(project, "r1", {}, lock_b64(up), stage="train_baseline@tfidf")
    b = run_workspace.materialize(project, "r1", {}, lock_b64(up), stage="train_baseline@image")
    assert a != b and a.name == "r1@train_baseline_tfidf" and b.name == "r1@train_baseline_image"
    ws = run_workspace.materialize(project, "r1", {}, f"{left} {right}")  # the next task: both upstream locks
    merged = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(merged) == {"audit", "train_baseline@tfidf", "train_baseline@image"}
    assert merged["train_baseline@image"]["outs"][0]["md5"] == "3"
    # Two branches that disagree on a stage's result: nothing is written.
    clash = lock_b64({"audit": {"cmd": "a", "outs": [{"path": "x", "md5": "9"}]}})
    with pytest.raises(run_workspace.WorkspaceError, match="stage audit: locks 1 and 2"):
        run_workspace.materialize(project, "r1", {}, [left, clash])
    assert set(yaml.safe_load((ws / "dvc.lock").read_text())["stages"]) == set(merged)
    # Through the command line, as the DAG's stage task calls it.
    env = {**os.environ, "DEEPFUSION_HOME": str(project), "RUN_SPEC": json.dumps({"run_id": "r1", "overrides": {}}),
           "RUN_LOCK": f"{left} {right}", "RUN_STAGE": "train_fusion"}
    r = subprocess.run([sys.executable, "-m", "components.orchestration.run_workspace", "materialize"], env=env,
                       capture_output=True, text=True, check=True)
    assert Path(r.stdout.strip()).name == "r1@train_fusion"
    assert "train_baseline@image" in (Path(r.stdout.strip()) / "dvc.lock").read_text()
    # What a stage task hands on: its own stage's entry only (a whole lock per upstream task once overflowed the
    # kernel's limit on one environment string).
    r = subprocess.run([sys.executable, "-m", "components.orchestration.run_workspace", "lock"], cwd=ws,
                       env={**env, "RUN_STAGE": "train_baseline@image"}, capture_output=True, text=True, check=True)
    own = yaml.safe_load(base64.b64decode(r.stdout.strip()))["stages"]
    assert own == {"train_baseline@image": merged["train_baseline@image"]}
    with pytest.raises(run_workspace.WorkspaceError, match="no entry for stage train_fusion"):
        run_workspace.encoded_lock(ws, "train_fusion")


def test_prune_keeps_or_removes_a_run_with_its_stage_folders(project):
    for i in range(4):
        for stage in (None, "audit", "train_fusion"):
            ws = run_workspace.materialize(project, f"r{i}", {}, stage=stage)
            os.utime(ws, (1000 + i, 1000 + i))
    removed = run_workspace.prune(project, keep=1, current="r0")
    kept = sorted(p.name for p in (project / "runs").iterdir())
    assert kept == ["r0", "r0@audit", "r0@train_fusion", "r3", "r3@audit", "r3@train_fusion"]
    assert len(removed) == 6


def test_a_worker_without_the_runs_disk_fetches_outputs_by_their_md5(project, tmp_path):
    """Issue 44: drift on a worker that shares no disk with the run that trained the model pulls that run's
    training data from the `artifacts` remote by the md5s its dvc.lock recorded (the registry keeps them)."""
    import yaml

    from components.lifecycle.provenance import locked_outputs

    run = tmp_path / "run"  # where the run made and pushed its outputs (another machine)
    (run / "artifacts" / "ingest").mkdir(parents=True)
    (run / "artifacts" / "ingest" / "products.parquet").write_bytes(b"the training table")
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=run, check=True)
    subprocess.run([DVC, "remote", "add", "-q", "artifacts", str(tmp_path / "remote")], cwd=run, check=True)
    subprocess.run([DVC, "add", "-q", "artifacts/ingest/products.parquet"], cwd=run, check=True)
    subprocess.run([DVC, "push", "-q", "-r", "artifacts"], cwd=run, check=True)
    md5 = yaml.safe_load((run / "artifacts/ingest/products.parquet.dvc").read_text())["outs"][0]["md5"]
    lock = {"schema": "2.0", "stages": {"ingest": {"cmd": "x", "outs": [
        {"path": "artifacts/ingest/products.parquet", "md5": md5}, {"path": "artifacts/ingest/x", "md5": "a.dir"}]}}}
    (run / "dvc.lock").write_text(yaml.safe_dump(lock))
    outs = locked_outputs(["artifacts/ingest/products.parquet", "artifacts/ingest/x", "nope"], run / "dvc.lock")
    assert outs == {"artifacts/ingest/products.parquet": md5}  # files only, known paths only

    folder = run_workspace.fetch_outputs(project, outs)  # `project` shares the remote, not the disk
    assert (folder / "products.parquet").read_bytes() == b"the training table"
    assert run_workspace.fetch_outputs(project, outs) == folder  # once per set of files
    with pytest.raises(run_workspace.WorkspaceError, match="(?s)could not fetch .*missing.*artifact store"):
        run_workspace.fetch_outputs(project, {"artifacts/ingest/images.npy": "0" * 32})
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # nothing half-fetched is left


def test_a_full_disk_says_where_and_what_to_do(project, monkeypatch):
    """The fault drill found a stage task on a full worker ending in pathlib's traceback; the task's log now says
    which disk and what to do (the drill fills a real one: scripts/drills.py)."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(project / "runs" / "r1@audit"))

    monkeypatch.setattr(run_workspace, "materialize", full)
    monkeypatch.setenv("RUN_SPEC", json.dumps({"run_id": "r1", "overrides": {}}))
    monkeypatch.setenv("DEEPFUSION_HOME", str(project))
    monkeypatch.setattr(sys, "argv", ["run_workspace", "materialize"])
    with pytest.raises(SystemExit) as exc:
        run_workspace.main()
    assert "no space left on this worker's disk" in str(exc.value) and "r1@audit" in str(exc.value)
    assert "clear the failed task" in str(exc.value)


def test_a_station_without_the_workers_disk_shows_the_champion_s_run(project, tmp_path, monkeypatch):
    """Issue 44: the review station in compose shares no disk with the workers and reads only the DVC remote.
    Register leaves a pointer per version (the run's lock and overrides), promote and rollback point `champion` at
    one; the station rebuilds that run's outputs from the remote, and moves on when the champion changes."""
    import signal

    import yaml

    from components.orchestration import champion_run
    from components.review import cli

    run = tmp_path / "runs" / "run-7"  # the retrain's workspace on a worker (another machine)
    (run / "artifacts" / "features").mkdir(parents=True)
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=run, check=True)
    subprocess.run([DVC, "remote", "add", "-q", "artifacts", str(tmp_path / "remote")], cwd=run, check=True)
    (run / "run.json").write_text(json.dumps({"overrides": {"seed": 7}}))
    model = load_raw(project / "params.yaml")["registry"]["model_name"]

    def trained(version: str, taxonomy: str) -> None:
        (run / "artifacts" / "features" / "encoders.json").write_text(taxonomy)
        subprocess.run([DVC, "add", "-q", "artifacts/features"], cwd=run, check=True)
        subprocess.run([DVC, "push", "-q", "-r", "artifacts"], cwd=run, check=True)
        md5 = yaml.safe_load((run / "artifacts/features.dvc").read_text())["outs"][0]["md5"]
        (run / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"features": {
            "cmd": "python -m components.pipeline.features", "outs": [
                {"path": "artifacts/features", "hash": "md5", "md5": md5}]}}}))
        assert champion_run.record_version(run, model, version)

    assert not champion_run.record_version(tmp_path / "plain", model, "1")  # no remote: services share a disk
    trained("1", '{"taxonomy": "v1"}')
    assert champion_run.champion_pointer(project, model) is None  # registered, not champion yet
    assert champion_run.record_champion(run, model, "1")
    station = champion_run.StationChampion(project, model)  # what `deepfusion review serve --home` is handed
    ws, pointer = cli.wait_for_run(project, poll_seconds=0.05, champion=station)
    assert pointer["version"] == "1" and ws.name == f"champion-{model}-v1" and ws.parent == project / "runs"
    assert (ws / "artifacts/features/encoders.json").read_text() == '{"taxonomy": "v1"}'
    assert yaml.safe_load((ws / "params.yaml").read_text())["seed"] == 7  # the run's own params
    assert not champion_run.record_champion(run, model, "9")  # a version without a pointer: nothing moves
    assert champion_run.champion_pointer(project, model)["version"] == "1"

    stopped = []
    monkeypatch.setattr(cli.os, "kill", lambda pid, sig: stopped.append((pid, sig)))
    watcher = cli.follow_champion(station, pointer, poll_seconds=0.05)
    trained("2", '{"taxonomy": "v2"}')
    champion_run.record_champion(run, model, "2")
    watcher.join(timeout=60)
    assert stopped == [(os.getpid(), signal.SIGTERM)]  # after the new run was fetched: the restart is quick
    assert (project / "runs" / f"champion-{model}-v2" / "artifacts/features/encoders.json").read_text() == \
        '{"taxonomy": "v2"}'
    assert not ws.exists()  # the old champion's rebuilt run is removed
    assert cli.wait_for_run(project, poll_seconds=0.05, champion=station)[1]["version"] == "2"
