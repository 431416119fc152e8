"""Drift of a new catalog batch against the training reference; the only module that touches Evidently.

    python -m components.drift BATCH_DIR [--output DIR] [--model PATH|models:/NAME@ALIAS]

Writes report.html (Evidently) and summary.json whose top-level `drift_detected` is our decision from
params.drift thresholds, with the reasons. Exit 0 whether or not drift is found; 2 if the batch is unreadable.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.catalog import LEVELS, TITLE, CatalogError, read_catalog
from components.checkpoint import CheckpointError, fusion_checkpoint
from components.config import DriftParams, Params, load_params
from components.data import cached_products
from components.encoders import tokenize
from components.images import ImageBatch
from components.metrics import classification
from components.serving.categorizer import Categorizer, load_images
from components.serving.predict import load_categorizer

log = logging.getLogger(__name__)

ONE_DAY_S = 86_400

CATEGORICAL = ["gender", "baseColour", "season", "usage", "pred_masterCategory", "pred_articleType"]
NUMERIC = ["price", "title_length", "title_oov_share", "pred_confidence", "image_brightness",
           "image_white_share"]


def describe(frame: pd.DataFrame, images: ImageBatch, cat: Categorizer) -> tuple[pd.DataFrame, dict]:
    """One row per product: monitored columns, predictions and image/text embeddings (emb_*)."""
    pred, emb = cat.predict(frame, images, embeddings=True)
    vocab = cat.encoders.vocab
    tokens = [tokenize(t) for t in frame[TITLE].fillna("")]
    has = np.array([s == "ok" for s in images.status])
    px = images.pixels.astype(np.float32)
    out = pd.DataFrame({
        **{c: frame[c].fillna("").astype(str).to_numpy() for c in CATEGORICAL[:4]},
        "price": pd.to_numeric(frame["price"], errors="coerce").to_numpy(float),
        "title_length": [len(t) for t in tokens],
        "title_oov_share": [np.mean([w not in vocab for w in t]) if t else 1.0 for t in tokens],
        "pred_masterCategory": pred["masterCategory"].to_numpy(),
        "pred_articleType": pred["articleType"].to_numpy(),
        "pred_confidence": pred["articleType_confidence"].to_numpy(float),
        # Scalar photo statistics: Evidently does not read pixels. NaN when there is no image.
        "image_brightness": np.where(has, px.mean(axis=(1, 2, 3)) / 255.0, np.nan),
        "image_white_share": np.where(has, (px.min(axis=3) > 240).mean(axis=(1, 2)), np.nan),
    })
    # Rows without an image get a zero image embedding: a growing share of imageless products is itself
    # a change worth seeing, and it moves the embedding distribution accordingly.
    img = np.nan_to_num(emb["image"], nan=0.0)
    vectors = pd.DataFrame(np.concatenate([img, emb["text"]], axis=1),
                           columns=[f"img_{i}" for i in range(img.shape[1])]
                           + [f"txt_{i}" for i in range(emb["text"].shape[1])])
    return pd.concat([out, vectors], axis=1), {"pred": pred}


def quality(frame: pd.DataFrame, pred: pd.DataFrame, cat: Categorizer) -> dict:
    """Accuracy and macro-F1 per level when the batch carries labels; unseen classes counted apart."""
    out = {}
    for lvl in LEVELS:
        y = frame[lvl].fillna("").astype(str).to_numpy()
        labelled = y != ""
        if not labelled.any():
            continue
        known = np.isin(y, cat.encoders.labels[lvl]) & labelled
        out[lvl] = {"labelled": int(labelled.sum()), "unseen_label_share": float(1 - known.sum() / labelled.sum()),
                    **classification(y[labelled], pred[lvl].to_numpy()[labelled])}
    return out


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, p: DriftParams):
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model as domain_classifier
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    img = [c for c in cur.columns if c.startswith("img_")]
    txt = [c for c in cur.columns if c.startswith("txt_")]
    defn = DataDefinition(numerical_columns=NUMERIC + img + txt, categorical_columns=CATEGORICAL,
                          embeddings={"image": img, "text": txt})
    method = domain_classifier(threshold=p.embedding_auc, pca_components=p.pca_components)
    report = Report([DataDriftPreset(columns=CATEGORICAL + NUMERIC, drift_share=p.column_drift_share),
                     EmbeddingsDrift(embeddings_name="image", drift_method=method),
                     EmbeddingsDrift(embeddings_name="text", drift_method=method)], include_tests=True)
    return report.run(current_data=Dataset.from_pandas(cur, data_definition=defn),
                      reference_data=Dataset.from_pandas(ref, data_definition=defn))


def decide(snapshot: dict, quality_: dict, p: DriftParams) -> dict:
    """Our decision from Evidently's statistics: drifted columns, embeddings, predictions, new labels."""
    columns, embeddings = {}, {}
    for t in snapshot.get("tests", []):
        params = t["metric_config"]["params"]
        if params.get("type", "").endswith("ValueDrift"):
            columns[params["column"]] = str(t["status"]).endswith("FAIL")
    for m in snapshot.get("metrics", []):
        if m["config"].get("type", "").endswith("EmbeddingsDrift"):
            embeddings[m["config"]["embeddings_name"]] = float(m["value"])
    reasons = []
    drifted = sorted(c for c, d in columns.items() if d)
    share = len(drifted) / max(len(columns), 1)
    if share >= p.column_drift_share:
        reasons.append(f"{len(drifted)}/{len(columns)} monitored columns drifted: {', '.join(drifted)}")
    for name, auc in embeddings.items():
        if auc > p.embedding_auc:
            reasons.append(f"{name} embeddings drifted (domain classifier ROC AUC {auc:.3f} > {p.embedding_auc})")
    if columns.get("pred_articleType"):
        reasons.append("predicted article-type mix changed")
    unseen = quality_.get("articleType", {}).get("unseen_label_share", 0.0)
    if unseen > p.unseen_label_share:
        reasons.append(f"{unseen:.1%} of labelled products have article types the model does not know")
    return {"drift_detected": bool(reasons), "reasons": reasons, "drifted_columns": drifted,
            "drifted_column_share": share, "columns": columns, "embedding_auc": embeddings}


def reference(params: Params, cat: Categorizer) -> pd.DataFrame:
    """Train-split products added up to drift.reference_date (or undated), a seeded sample, described."""
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet", columns=["split", "catalogAddDate"])
    cutoff = datetime.fromisoformat(params.drift.reference_date).replace(tzinfo=UTC).timestamp()
    # The reference date is a whole day: products added during it belong to the reference.
    keep = (df["split"] == "train") & ~(df["catalogAddDate"] > cutoff + ONE_DAY_S)
    idx = np.flatnonzero(keep.to_numpy())
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.choice(idx, size=min(len(idx), params.drift.reference_sample), replace=False))
    described, _ = describe(*cached_products(params.paths.ingest, idx), cat)
    return described


def run(params: Params, batch_dir: Path, output: Path, model: str) -> dict:
    t0 = time.perf_counter()
    read = read_catalog(batch_dir, require_labels=False)
    if read.frame.empty:
        raise CatalogError(f"{batch_dir}: no readable products ({len(read.problems)} rejected rows)")
    cat = load_categorizer(model)
    h, w = cat.image_size
    images = load_images(list(read.frame["image"]), h, w, root=batch_dir)
    cur, extra = describe(read.frame, images, cat)
    ref = reference(params, cat)
    snap = evidently_report(ref, cur, params.drift)
    q = quality(read.frame, extra["pred"], cat)
    summary = decide(snap.dict(), q, params.drift)
    rejected = sum(1 for p in read.problems if not p.get("kept"))  # kept: a note on a row that was read
    summary.update({"batch": str(batch_dir), "products": len(cur), "rejected_rows": rejected,
                    "reference_products": len(ref), "quality": q, "model": model,
                    "seconds": round(time.perf_counter() - t0, 1)})
    with atomic_dir(output) as tmp:
        snap.save_html(str(tmp / "report.html"))
        write_json(tmp / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m components.drift", description=__doc__.split("\n")[0])
    ap.add_argument("batch_dir", type=Path)
    ap.add_argument("--output", type=Path)
    ap.add_argument("--model", help="checkpoint path or models:/NAME@ALIAS (default: the pipeline's fusion model)")
    args = ap.parse_args(argv)
    params = load_params()
    output = args.output or Path(params.drift.output) / args.batch_dir.name
    try:
        s = run(params, args.batch_dir, output, args.model or str(fusion_checkpoint(params.paths.train_fusion)))
    except (CatalogError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = "DRIFT" if s["drift_detected"] else "no drift"
    print(f"{args.batch_dir}: {verdict} ({s['products']} products, {s['seconds']} s) -> {output}")
    for r in s["reasons"]:
        print(f"  - {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
