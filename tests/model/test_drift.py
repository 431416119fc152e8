"""Drift decisions on batches built from the synthetic training catalog, with the small trained model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from components.catalog import read_catalog
from components.config import DriftParams
from components.ops import drift, replay


def batch_from(source: Path, ids: list[int], dst: Path) -> Path:
    frame = read_catalog(source).frame
    lines = (source / "styles.csv").read_text().splitlines()
    styles = {int(ln.split(",", 1)[0]): ln for ln in lines[1:]}
    replay.write_batch(source, frame[frame["id"].isin(ids)], styles, lines[0], dst)
    return dst


def model_path(params) -> str:
    return str(Path(params.paths.train_fusion) / "model" / "model.pt")


def train_ids(params) -> list[int]:
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    return df.loc[df["split"] == "train", "id"].tolist()


def test_batch_sampled_from_reference_does_not_drift(trained, tmp_path):
    params, data, _ = trained
    ids = train_ids(params)[::2]
    batch = batch_from(data, ids, tmp_path / "same")
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] is False, s["reasons"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["drift_detected"] is False


def test_shifted_category_mix_drifts(trained, tmp_path):
    params, data, _ = trained
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    ids = df.loc[df["articleType"] == "Watches", "id"].tolist()
    s = drift.run(params, batch_from(data, ids, tmp_path / "watches"), tmp_path / "out", model_path(params))
    assert s["drift_detected"] and any("predicted article-type mix" in r or "columns drifted" in r
                                       for r in s["reasons"])


def test_unseen_article_types_drift(trained, tmp_path):
    params, data, _ = trained
    batch = batch_from(data, train_ids(params)[::2], tmp_path / "new_types")
    styles = batch / "styles.csv"
    lines = styles.read_text().splitlines()
    lines = [lines[0]] + [ln.replace(",Tshirts,", ",Sarees,").replace(",Jeans,", ",Kurtas,") for ln in lines[1:]]
    styles.write_text("\n".join(lines) + "\n")
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] and any("article types the model does not know" in r for r in s["reasons"])
    assert s["quality"]["articleType"]["unseen_label_share"] > 0.2


def test_altered_images_drift(trained, tmp_path):
    params, data, _ = trained
    batch = batch_from(data, train_ids(params)[::2], tmp_path / "dark")
    for p in (batch / "images").glob("*.jpg"):
        try:
            img = Image.open(p).convert("RGB")
        except OSError:
            continue
        p.unlink()  # hard link: never write through to the source catalog
        Image.fromarray((np.asarray(img) * 0.35).astype(np.uint8)).save(p, format="JPEG")
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"]
    assert "image_brightness" in s["drifted_columns"] or s["embedding_auc"]["image"] > params.drift.embedding_auc


def test_malformed_batch_is_a_clear_error(trained, tmp_path, capsys, monkeypatch):
    params, _, _ = trained
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "styles.csv").write_text("sku,name\n1,x\n")
    monkeypatch.setattr(drift, "load_params", lambda: params)
    assert drift.main([str(tmp_path / "bad"), "--output", str(tmp_path / "o"), "--model", model_path(params)]) == 2
    err = capsys.readouterr().err
    assert "styles.csv" in err and "missing column" in err
    assert not (tmp_path / "o").exists()


def test_decision_logic_by_hand():
    p = DriftParams(reference_date="2015-12-31", reference_sample=10, min_batch_rows=1, column_drift_share=0.5,
                    embedding_auc=0.65, pca_components=4, unseen_label_share=0.02, output="o", replay_output="r")

    def snap(failed: list[str], cols: list[str], aucs: dict[str, float]) -> dict:
        tests = [{"metric_config": {"params": {"type": "evidently:metric_v2:ValueDrift", "column": c}},
                  "status": "TestStatus.FAIL" if c in failed else "TestStatus.SUCCESS"} for c in cols]
        metrics = [{"config": {"type": "evidently:metric_v2:EmbeddingsDrift", "embeddings_name": k}, "value": v}
                   for k, v in aucs.items()]
        return {"tests": tests, "metrics": metrics}

    quiet = drift.decide(snap(["price"], ["price", "gender", "season", "usage"], {"image": 0.5}), {}, p)
    assert quiet["drift_detected"] is False and quiet["drifted_column_share"] == 0.25
    loud = drift.decide(snap(["price", "gender"], ["price", "gender", "season", "usage"], {"image": 0.5}), {}, p)
    assert loud["drift_detected"] and "2/4 monitored columns drifted" in loud["reasons"][0]
    emb = drift.decide(snap([], ["price"], {"text": 0.8}), {}, p)
    assert emb["drift_detected"] and "text embeddings drifted" in emb["reasons"][0]
    mix = drift.decide(snap(["pred_articleType"], ["pred_articleType", "a", "b"], {}), {}, p)
    assert mix["drift_detected"] and mix["reasons"] == ["predicted article-type mix changed"]


def test_month_batches_merge_small_months():
    jan, feb, mar = 1451606400, 1454284800, 1456790400  # 2016-01-01, 02-01, 03-01 UTC
    dates = pd.Series([jan] * 5 + [feb] * 2 + [mar] * 6 + [1420070400] * 3, dtype=float)
    b = replay.month_batches(dates, cutoff=1451606399, min_rows=4)
    assert {k: len(v) for k, v in b.items()} == {"2016-01": 5, "2016-03": 8}


def test_replay_writes_batches_in_catalog_layout(trained, tmp_path):
    _, data, _ = trained
    out = tmp_path / "replay"
    index = replay.run(data, out, "2015-03-31", min_rows=20)
    assert sum(index.values()) > 0
    first = out / next(iter(index))
    read = read_catalog(first)
    assert len(read.frame) == index[first.name] and not read.problems
