"""Stage features: artifacts/ingest/ -> artifacts/features/ (encoders.json, features.npz, summary.json)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.config import Params, load_params
from components.data import SPLIT_CODES
from components.encoders import encode_frame, encode_labels, fit_encoders

log = logging.getLogger(__name__)

def run(params: Params) -> dict:
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    train = df[df["split"] == "train"]
    enc = fit_encoders(train, params.features, params.catalog, df)
    arrays = encode_frame(df, enc)
    arrays["labels"] = encode_labels(df, enc)
    arrays["has_image"] = df["has_image"].to_numpy(bool)
    arrays["split"] = df["split"].map(SPLIT_CODES).to_numpy(np.int8)
    arrays["group"] = pd.factorize(df["group"])[0].astype(np.int64)
    summary = {"vocab_size": len(enc.vocab) + 2, "attr_vocab_size": len(enc.attr_vocab) + 2,
               **{f"classes_{lvl}": len(enc.labels[lvl]) for lvl in enc.levels},
               "taxonomy_paths": len(enc.taxonomy)}
    with atomic_dir(params.paths.features) as tmp:
        write_json(tmp / "encoders.json", enc.to_dict())
        np.savez(tmp / "features.npz", **arrays)
        write_json(tmp / "summary.json", summary)
    log.info("features: %s", summary)
    return summary


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()
