"""Stage train_baseline@<model>: features -> artifacts/train_baseline/<model>/ + metrics_<model>.json.

<model> is `tfidf` (word + char n-gram TF-IDF, logistic regression per level, on title + metadata) or one
neural modality (`image`, `text`, `metadata`), trained with the same loop as the fusion model.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.config import Params, load_params
from components.data import excluded_ids, load_arrays, split_arrays, training_split
from components.encoders import Encoders, encode_labels, load_encoders
from components.experts import BASELINES, BY_NAME
from components.models.tfidf import TfidfBaseline, save_tfidf
from components.training.loop import peak_rss_mib
from components.training.neural import train_neural, val_scores

log = logging.getLogger(__name__)

MODELS = tuple(e.name for e in BASELINES)  # the experts this stage trains (components.experts)


class BaselineError(ValueError):
    """The requested baseline is unknown or switched off in params."""


def timings_file(params: Params, which: str) -> Path:
    """Run-to-run figures (wall time, throughput, memory): beside the DVC outputs, never one of them."""
    return Path(params.paths.train_baseline) / f"timings_{which}.json"


def train_tfidf(params: Params, enc: Encoders, df: pd.DataFrame, out_dir: Path) -> tuple[dict, dict]:
    train = df[(df.split == "train") & ~df["id"].astype(str).isin(excluded_ids(params.paths.audit))]
    val = df[df.split == "val"]
    y_train, y_val = encode_labels(train, enc), encode_labels(val, enc)
    t0 = time.perf_counter()
    model = TfidfBaseline(params.train_baseline.tfidf, tuple(enc.categorical),
                          params.features.use_description).fit(train, y_train)
    seconds = time.perf_counter() - t0
    metrics = val_scores(model.predict_proba(val, [len(v) for v in enc.labels.values()]), y_val, enc.levels)
    save_tfidf(model, out_dir / "model.npz")
    timings = {"train_seconds": round(seconds, 1), "train_products_per_s": round(len(train) / seconds, 1),
               "peak_rss_mib": round(peak_rss_mib(), 1)}
    return metrics, timings


def run(params: Params, which: str) -> dict:
    if which not in MODELS:
        raise BaselineError(f"train_baseline: unknown model {which!r}; choose one of {MODELS}")
    linear = BY_NAME[which].linear
    if not linear and which not in params.train_baseline.modalities:
        raise BaselineError(f"train_baseline: {which!r} is not in params.train_baseline.modalities")
    enc = load_encoders(params.paths.features)
    out = Path(params.paths.train_baseline) / which
    with atomic_dir(out) as tmp:
        if linear:
            df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
            metrics, timings = train_tfidf(params, enc, df, tmp)
        else:
            arrays, split = load_arrays(params.paths.ingest, params.paths.features)
            split = training_split(split, params.paths.ingest, params.paths.audit)
            metrics, timings = train_neural(params.model, params.seed, enc, split_arrays(arrays, split), (which,),
                                            params.train_baseline.train, tmp)
    # Metrics sit beside the model folder so DVC can track them uncached as metrics.
    write_json(Path(params.paths.train_baseline) / f"metrics_{which}.json", metrics)
    write_json(timings_file(params, which), timings)
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m components.pipeline.train_baseline {{{'|'.join(MODELS)}}}")
    try:
        run(load_params(), sys.argv[1])
    except BaselineError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
