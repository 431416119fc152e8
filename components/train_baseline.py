"""Stage train_baseline@<model>: features -> artifacts/train_baseline/<model>/.

<model> is `tfidf` (word + char n-gram TF-IDF, logistic regression per level, on title + metadata) or one
neural modality (`image`, `text`, `metadata`), trained with the same loop as the fusion model.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import joblib
import pandas as pd

from components import tracking
from components.artifacts import atomic_dir, write_json
from components.catalog import LEVELS
from components.config import Params, load_params, params_to_dict
from components.data import load_arrays, split_arrays
from components.features import Encoders, encode_labels, load_encoders
from components.models.tfidf import TfidfBaseline
from components.neural_stage import train_neural
from components.training import macro_f1, peak_rss_mib

log = logging.getLogger(__name__)

MODELS = ("tfidf", "image", "text", "metadata")


def train_tfidf(params: Params, enc: Encoders, df: pd.DataFrame, out_dir: Path) -> dict:
    train, val = df[df.split == "train"], df[df.split == "val"]
    y_train, y_val = encode_labels(train, enc), encode_labels(val, enc)
    t0 = time.perf_counter()
    model = TfidfBaseline(params.train_baseline.tfidf, params.features.categorical,
                          params.features.use_description).fit(train, y_train)
    seconds = time.perf_counter() - t0
    probs = model.predict_proba(val, [len(enc.labels[lvl]) for lvl in LEVELS])
    metrics = {}
    for lvl, name in enumerate(("master", "sub", "article")):
        metrics[f"val_{name}_accuracy"] = float((probs[lvl].argmax(1) == y_val[:, lvl]).mean())
        metrics[f"val_{name}_macro_f1"] = macro_f1(y_val[:, lvl], probs[lvl])
    metrics.update(train_seconds=round(seconds, 1), train_products_per_s=round(len(train) / seconds, 1),
                   peak_rss_mib=round(peak_rss_mib(), 1))
    joblib.dump(model, out_dir / "model.joblib")
    with tracking.training_run(params, "train_baseline/tfidf", {"stage": "train_baseline",
                                                                "modalities": "text,metadata"}) as run:
        run.log_params({"tfidf": params_to_dict(params.train_baseline.tfidf)})
        run.log_metrics(metrics)
        run.log_artifact(out_dir / "model.joblib")
        metrics["run_id"] = run.run_id
    return metrics


def run(params: Params, which: str) -> dict:
    if which not in MODELS:
        raise SystemExit(f"train_baseline: unknown model {which!r}; choose one of {MODELS}")
    if which != "tfidf" and which not in params.train_baseline.modalities:
        raise SystemExit(f"train_baseline: {which!r} is not in params.train_baseline.modalities")
    enc = load_encoders(params.paths.features)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    out = Path(params.paths.train_baseline) / which
    with atomic_dir(out) as tmp:
        if which == "tfidf":
            metrics = train_tfidf(params, enc, df, tmp)
        else:
            arrays, split = load_arrays(params.paths.ingest, params.paths.features)
            splits = split_arrays(arrays, split)
            example = tracking.example_frame(df[df.split == "val"], Path(params.paths.raw))
            metrics = train_neural(params, enc, splits, (which,), params.train_baseline.train, tmp,
                                   f"train_baseline/{which}", example)
    # Metrics sit beside the model folder so DVC can track them uncached as metrics.
    write_json(Path(params.paths.train_baseline) / f"metrics_{which}.json", metrics)
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m components.train_baseline {{{'|'.join(MODELS)}}}")
    run(load_params(), sys.argv[1])


if __name__ == "__main__":
    main()
