"""Stage evaluate: every trained model on the held-out test split -> artifacts/evaluate/.

metrics.json (per model and level, with bootstrap CIs; fusion extras: calibration, auto-accept coverage,
hierarchy consistency, retrieval), per_class.csv, plots/*.csv (DVC plots) and comparison.md.
Evaluation reports; it never fails on bad numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

from components import metrics as M
from components.atomic_io import atomic_dir, write_json
from components.catalog import ARTICLE, LEVELS
from components.checkpoint import fusion_checkpoint, load_checkpoint
from components.config import EvaluateParams, Params, load_params
from components.data import Arrays, load_arrays, split_arrays
from components.encoders import Encoders, load_encoders
from components.models.runtime import PREDICT_BATCH, predict_arrays, select_device
from components.models.tfidf import load_tfidf
from components.report import comparison_table

log = logging.getLogger(__name__)

ABLATIONS = {"fusion[image only]": (True, False, False), "fusion[text only]": (False, True, False),
             "fusion[metadata only]": (False, False, True)}
HEAD_MIN, TAIL_MAX = 500, 100  # train rows: head >= 500, tail < 100, torso in between


def score_model(probs: list[np.ndarray], labels: np.ndarray, p: EvaluateParams, seed: int,
                bands: dict[int, str]) -> dict:
    out = {}
    for lvl, name in enumerate(LEVELS):
        y, pred = labels[:, lvl], probs[lvl].argmax(1)
        res = M.classification(y, pred)
        for k, (lo, hi) in M.bootstrap_ci(y, pred, p.bootstrap, seed).items():
            res[f"{k}_ci_low"], res[f"{k}_ci_high"] = lo, hi
        if name == "articleType":
            res.update({f"f1_{b}": v for b, v in M.band_f1(y, pred, bands).items()})
        out[name] = res
    return out


def business_view(probs: list[np.ndarray], labels: np.ndarray, enc: Encoders, p: EvaluateParams) -> dict:
    """Calibration, auto-accept coverage and hierarchy consistency of the articleType predictions."""
    conf = probs[ARTICLE].max(1)
    correct = probs[ARTICLE].argmax(1) == labels[:, ARTICLE]
    out = {"ece": M.expected_calibration_error(conf, correct, p.calibration_bins)}
    for t in p.precision_targets:
        cov = M.coverage_at_precision(conf, correct, t)
        out.update({f"coverage_at_{t:g}": cov["coverage"], f"threshold_at_{t:g}": cov["threshold"],
                    f"review_per_10k_at_{t:g}": cov["review_per_10k"]})
    names = [np.asarray(enc.labels[lvl], dtype=object) for lvl in LEVELS]
    paths = list(zip(*(names[i][probs[i].argmax(1)] for i in range(3))))
    out["hierarchy_consistency"] = M.hierarchy_consistency(paths, set(enc.taxonomy))
    return out


def retrieval_view(model, test: Arrays, frame: pd.DataFrame, ks: tuple[int, ...], device) -> dict:
    """Title -> image and image -> title on test products that have an image."""
    keep = np.flatnonzero(test.has_image)
    sub = test.subset(keep)
    emb = predict_arrays(model, sub, PREDICT_BATCH, device, embeddings=True)["embeddings"]
    rel = M.relevance(frame["title_norm"].to_numpy()[keep], frame["image_md5"].to_numpy()[keep])
    t2i = M.retrieval(emb["text"], emb["image"], rel, ks)
    i2t = M.retrieval(emb["image"], emb["text"], rel, ks)
    return {"queries": len(keep), **{f"text_to_image_{k}": v for k, v in t2i.items()},
            **{f"image_to_text_{k}": v for k, v in i2t.items()}}


def per_class_table(labels: np.ndarray, probs: np.ndarray, enc: Encoders, train_counts: dict[int, int],
                    bands: dict[int, str]) -> pd.DataFrame:
    classes = list(range(len(enc.labels["articleType"])))
    p, r, f, s = precision_recall_fscore_support(labels, probs.argmax(1), labels=classes, zero_division=0)
    return pd.DataFrame({"articleType": enc.labels["articleType"], "band": [bands[c] for c in classes],
                         "train_rows": [train_counts[c] for c in classes], "test_support": s,
                         "precision": p.round(4), "recall": r.round(4), "f1": f.round(4)})


def run(params: Params) -> dict:
    p, device = params.evaluate, select_device("auto")
    enc = load_encoders(params.paths.features)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    splits = split_arrays(arrays, split)
    test, frame = splits["test"], df[df["split"] == "test"].reset_index(drop=True)
    y = test.labels
    train_y = splits["train"].labels[:, ARTICLE]
    train_counts = {c: int((train_y == c).sum()) for c in range(len(enc.labels["articleType"]))}
    bands = M.frequency_bands(train_counts, HEAD_MIN, TAIL_MAX)

    probs: dict[str, list[np.ndarray]] = {}
    base = Path(params.paths.train_baseline)
    if (base / "tfidf" / "model.joblib").is_file():  # the classical baseline every model is compared with
        tfidf = load_tfidf(base / "tfidf" / "model.joblib")
        probs["tfidf"] = tfidf.predict_proba(frame, [len(enc.labels[lvl]) for lvl in LEVELS])
    for m in params.train_baseline.modalities:
        if not (base / m / "model.pt").is_file():
            log.warning("no %s baseline at %s: left out of the comparison", m, base / m)
            continue
        model, _, _ = load_checkpoint(base / m / "model.pt", device)
        probs[f"{m}-only"] = predict_arrays(model, test, PREDICT_BATCH, device)["probs"]
    fusion, _, _ = load_checkpoint(fusion_checkpoint(params.paths.train_fusion), device)
    probs["fusion"] = predict_arrays(fusion, test, PREDICT_BATCH, device)["probs"]
    for name, present in ABLATIONS.items():
        probs[name] = predict_arrays(fusion, test, PREDICT_BATCH, device, present=present)["probs"]

    results = {name: score_model(pr, y, p, params.seed, bands) for name, pr in probs.items()}
    results["fusion"]["business"] = business_view(probs["fusion"], y, enc, p)
    if "tfidf" in probs:
        results["tfidf"]["business"] = business_view(probs["tfidf"], y, enc, p)
    results["fusion"]["retrieval"] = retrieval_view(fusion, test, frame, p.retrieval_k, device)
    results["test_products"] = len(y)

    with atomic_dir(params.paths.evaluate) as tmp:
        write_json(tmp / "metrics.json", results)
        per_class_table(y[:, ARTICLE], probs["fusion"][ARTICLE], enc, train_counts, bands).to_csv(tmp / "per_class.csv",
                                                                                       index=False)
        (tmp / "plots").mkdir()
        names = np.asarray(enc.labels["articleType"], dtype=object)
        pd.DataFrame({"actual": names[y[:, ARTICLE]], "predicted": names[probs["fusion"][ARTICLE].argmax(1)]}).to_csv(
            tmp / "plots" / "confusion.csv", index=False)
        pc = pd.read_csv(tmp / "per_class.csv")[["articleType", "f1"]].sort_values("f1")
        pc.to_csv(tmp / "plots" / "per_class_f1.csv", index=False)
        (tmp / "comparison.md").write_text(comparison_table(results))
    log.info("evaluate: fusion articleType %s", results["fusion"]["articleType"])
    return results


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_grad_enabled(False)
    run(load_params())


if __name__ == "__main__":
    main()
