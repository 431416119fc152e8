"""A landing batch's life with a real (tiny) model: validated -> reported -> categorized -> _done/, and never
done before its predictions exist (issue 39.8: the drift report marked a batch done, so a failed categorize
lost it for good)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.checkpoint import fusion_checkpoint
from components.config import deep_merge, load_raw
from components.lifecycle.provenance import files_md5
from components.orchestration import batch_state, landing
from tests.conftest import ROOT, TINY_OVERRIDES, make_catalog


@pytest.fixture
def home(trained, tmp_path) -> Path:
    params, _, _ = trained
    raw = deep_merge(load_raw(ROOT / "params.yaml"), TINY_OVERRIDES)
    raw = deep_merge(raw, {"paths": {"categorize": str(tmp_path / "out"), "evaluate": params.paths.evaluate}})
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path / "home"


def upload(area: Path, name: str, seed: int) -> Path:
    batch = make_catalog(area / name, n=40, seed=seed, start_id=50_000 + seed * 100)
    (batch / landing.READY).write_text("")
    return batch


def test_a_batch_is_done_only_once_its_predictions_exist(trained, home, tmp_path):
    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    area = tmp_path / "landing"
    batch = upload(area, "2017-01", seed=4)
    [item] = landing.pending_batches(area)
    assert item == {"batch": str(batch), "content_md5": files_md5(batch)}
    landing.check_batch(home, **item)
    assert batch_state.status(area, "2017-01", item["content_md5"]) == "validated"
    # What the drift report records (drift_batch itself runs in the DAG tests).
    batch_state.advance(area, "2017-01", "reported", item["content_md5"], drift_detected=False, report="r")
    assert landing.pending_batches(area) == [] and landing.awaiting_categorize(area) == ["2017-01"]

    with pytest.raises(Exception):  # noqa: B017 (whatever a broken model raises, the batch must survive it)
        landing.categorize_batch(home, area, "2017-01", str(tmp_path / "no-such-model.pt"))
    assert batch.is_dir() and batch_state.status(area, "2017-01", item["content_md5"]) == "reported"
    assert landing.awaiting_categorize(area) == ["2017-01"]  # the next drift run announces it again

    out = landing.categorize_batch(home, area, "2017-01", model)
    assert out["products"] == 40 and out["batch"] == str(area / "_done" / "2017-01")
    state = batch_state.read_state(area, "2017-01")
    assert state.state == "categorized" and state.model == model and state.report == "r"
    assert [h["state"] for h in state.history] == ["validated", "reported", "categorized"]
    written = json.loads((Path(out["output"]) / "model.json").read_text())
    assert written["content_md5"] == item["content_md5"] and written["model"] == model
    assert not batch.exists() and landing.pending_batches(area) == [] and landing.awaiting_categorize(area) == []
    # ...and its review-queue share is a point on the monitoring dashboard.
    snapshots = [json.loads(f.read_text()) for f in (home / "artifacts" / "monitoring").glob("*/snapshots/*.json")]
    assert [s["metadata"]["batch"] for s in snapshots] == ["2017-01"] and snapshots[0]["tags"] == ["categorize"]

    # Announced twice: the second categorize finds the same content done by the same model and scores nothing.
    again = landing.categorize_batch(home, area, "2017-01", model)
    assert again["already_categorized"] is True
    # The same files uploaded again: archived without work.
    upload(area, "2017-01", seed=4)
    assert landing.pending_batches(area) == [] and not (area / "2017-01").exists()


def test_content_changed_during_a_run_is_never_recorded_as_processed(trained, home, tmp_path):
    area = tmp_path / "landing"
    batch = upload(area, "2017-02", seed=5)
    [item] = landing.pending_batches(area)  # hashed here, before anything reads the files
    styles = batch / "styles.csv"
    styles.write_text(styles.read_text().replace("Summer", "Winter"))  # re-uploaded while the run goes on
    landing.check_batch(home, **item)
    # The old content is `validated`; the files now in the folder are new content, so the batch is pending.
    assert [b["content_md5"] for b in landing.pending_batches(area)] == [files_md5(batch)] != [item["content_md5"]]


def test_a_batch_in_shards_scores_as_one_process_does_and_is_merged_once(trained, home, tmp_path):
    """Issue 44: shards scored in any order (one twice, as a retried task), merged atomically; until every part is
    there the merge refuses and the batch stays; the result equals one process's, row for row."""
    import pandas as pd

    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    raw = load_raw(home / "params.yaml")
    (home / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, {"landing": {"shard_rows": 15}})))
    area = tmp_path / "landing"
    upload(area, "whole", seed=6)
    batch = upload(area, "sharded", seed=6)  # the same 40 products
    (batch / "styles.csv").write_text((batch / "styles.csv").read_text() + "not,a,valid,row\n")  # one rejected
    (area / "whole" / "styles.csv").write_text((batch / "styles.csv").read_text())
    one = landing.categorize_batch(home, area, "whole", model)

    tasks = landing.shard_plan(home, area, ["sharded", "no-such-batch"], model)  # a bad name holds back nothing
    assert [[(p["batch"], p["shard"], p["of"], p["rows"]) for p in t] for t in tasks] == [
        [("sharded", 0, 3, 14)], [("sharded", 1, 3, 13)], [("sharded", 2, 3, 13)]]  # 15 rows a task: one shard each
    plan = [spec for t in tasks for spec in t]
    scored = [landing.score_shard(home, area, spec, model) for spec in (plan[2], plan[0])]
    assert all(s["rows"] > 0 for s in scored)
    with pytest.raises(RuntimeError, match="shards are not all scored"):
        landing.merge_shards(home, area, "sharded", model, scored)
    assert batch.is_dir() and not (tmp_path / "out" / "sharded").exists()  # nothing half-merged
    # An uploader (who can write in the landing area) swaps a part for one of their own making: refused.
    part = next((area / landing.SHARDS / "sharded").rglob("part-00000-*"))
    genuine = part.read_bytes()
    forged = pd.read_parquet(part).assign(articleType="Forged")
    part.write_bytes(forged.to_parquet(index=False))
    scored += [landing.score_shard(home, area, spec, model) for spec in (plan[1], plan[1])]  # a retry: scored again
    with pytest.raises(RuntimeError, match="part-00000-of-00003.parquet .* not as its shard task wrote it"):
        landing.merge_shards(home, area, "sharded", model, scored)
    part.write_bytes(genuine)
    merged = landing.merge_shards(home, area, "sharded", model, scored)
    assert merged["shards"] == 3 and merged["products"] == one["products"] == 41
    a = pd.read_csv(tmp_path / "out" / "whole" / "predictions.csv")
    b = pd.read_csv(tmp_path / "out" / "sharded" / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)
    assert (b["status"].str.startswith("rejected")).sum() == 1  # one status per input row, the rejected one too
    assert (tmp_path / "out" / "sharded" / "review_queue.csv").read_bytes() == (
        tmp_path / "out" / "whole" / "review_queue.csv").read_bytes()
    assert batch_state.read_state(area, "sharded").state == "categorized" and not batch.exists()
    assert not (area / landing.SHARDS / "sharded").exists()
    assert landing.merge_shards(home, area, "sharded", model, [])["already_categorized"] is True
    assert landing.shard_plan(home, area, ["sharded"], model) == []  # done: nothing to score again


def test_a_batch_changed_after_the_plan_is_not_scored(trained, home, tmp_path):
    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    area = tmp_path / "landing"
    batch = upload(area, "2017-03", seed=7)
    [[spec]] = landing.shard_plan(home, area, ["2017-03"], model)
    styles = batch / "styles.csv"
    styles.write_text(styles.read_text().replace("Summer", "Winter"))
    assert landing.score_shard(home, area, spec, model) == {"batch": "2017-03", "shard": 0, "changed": True}
    with pytest.raises(RuntimeError, match="trigger categorize for it again"):
        landing.merge_shards(home, area, "2017-03", model, [])
    assert batch.is_dir() and batch_state.read_state(area, "2017-03") is None


def test_the_state_file_allows_only_the_batch_life(tmp_path):
    area = tmp_path / "landing"
    batch_state.advance(area, "b", "validated", "m1")
    batch_state.advance(area, "b", "reported", "m1")
    with pytest.raises(batch_state.TransitionError, match="reported -> validated"):
        batch_state.advance(area, "b", "validated", "m1")
    batch_state.advance(area, "b", "categorized", "m1")
    with pytest.raises(batch_state.TransitionError, match="categorized -> failed"):
        batch_state.advance(area, "b", "failed", "m1", reason="late")
    with pytest.raises(batch_state.TransitionError, match="not a state a step can record"):
        batch_state.advance(area, "b", "ready", "m1")
    fresh = batch_state.advance(area, "b", "validated", "m2")  # other content: its life starts again
    assert [h["state"] for h in fresh.history] == ["validated"] and fresh.report == ""


def test_a_full_disk_keeps_the_batch_and_says_what_to_do(trained, home, tmp_path, monkeypatch):
    """The fault drill filled a worker's disks: the merge failed with a bare OSError. It still fails as an OSError
    (the task retries, maybe on another worker), now naming the folder and what to do, and nothing is half-written."""
    import errno

    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    area = tmp_path / "landing"
    batch = upload(area, "2017-02", seed=6)
    [item] = landing.pending_batches(area)
    landing.check_batch(home, **item)
    batch_state.advance(area, "2017-02", "reported", item["content_md5"], drift_detected=False, report="r")

    def full(frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(landing, "csv_bytes", full)
    with pytest.raises(OSError) as exc:
        landing.categorize_batch(home, area, "2017-02", model)
    assert exc.value.errno == errno.ENOSPC and "free space there" in str(exc.value) and "2017-02" in str(exc.value)
    assert batch.is_dir() and batch_state.status(area, "2017-02", item["content_md5"]) == "reported"
    assert landing.awaiting_categorize(area) == ["2017-02"]
    assert not (tmp_path / "out" / "2017-02").exists()


def test_small_uploads_are_scored_and_merged_a_few_per_task(trained, home, tmp_path, monkeypatch):
    """A burst of small uploads: their shards packed into tasks (the model loaded once per task), merged a group at
    a time; a batch of the group that cannot be merged fails the task by name after the others are categorized."""
    from components.serving import predict

    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    area = tmp_path / "landing"
    names = [f"burst-{k}" for k in range(landing.BATCHES_PER_TASK + 2)]
    for k, name in enumerate(names):
        upload(area, name, seed=20 + k)
    tasks = landing.shard_plan(home, area, names, model)
    assert [len(t) for t in tasks] == [landing.BATCHES_PER_TASK, 2]  # 40 products each, far below shard_rows
    assert [s["batch"] for t in tasks for s in t] == names
    loads = []
    real = predict.load_categorizer
    monkeypatch.setattr(predict, "load_categorizer", lambda m: loads.append(m) or real(m))
    scored = [s for t in tasks for s in landing.score_shards(home, area, t, model)]
    assert loads == [model, model] and all(s["rows"] == 40 for s in scored)
    (area / landing.SHARDS / names[1]).rename(tmp_path / "lost")  # one batch's part gone before its merge
    first, second = landing.in_groups(names)
    with pytest.raises(RuntimeError, match=f"(?s)1 of {len(first)} batch.*{names[1]}: RuntimeError: .*not all scored"):
        landing.merge_group(home, area, first, model, scored)
    states = {n: batch_state.read_state(area, n) for n in names}
    assert [n for n in first if states[n] and states[n].state == "categorized"] == [n for n in first if n != names[1]]
    assert (area / names[1]).is_dir()  # left in the landing area for the next run
    assert [r["products"] for r in landing.merge_group(home, area, second, model, scored)] == [40, 40]


def test_a_group_reports_every_batch_whatever_becomes_of_the_others(trained, home, tmp_path):
    """One task validates and reports a group: a rejected batch goes to _failed/, a batch whose report cannot be made
    (here: no training data to compare with in this home) stays validated for the next run; nothing is raised."""
    params, _, _ = trained
    model = str(fusion_checkpoint(params.paths.train_fusion))
    area = tmp_path / "landing"
    upload(area, "good", seed=8)
    bad = upload(area, "bad", seed=9)
    (bad / "styles.csv").write_text("sku,name\n1,x\n")
    group = landing.pending_batches(area)
    results = {Path(r["batch"]).name: r for r in landing.report_group(home, group, model)}
    assert results["bad"]["rejected"] is True and "missing column" in results["bad"]["error"]
    assert (area / landing.FAILED / "bad" / "validation_report.json").is_file()
    assert "FileNotFoundError" in results["good"]["error"] and "no training data" in results["good"]["error"]
    assert batch_state.read_state(area, "good").state == "validated"
    assert [b["batch"] for b in landing.pending_batches(area)] == [str(area / "good")]  # the next run takes it again
