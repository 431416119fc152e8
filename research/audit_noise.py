"""Does the catalog audit find mislabels and wrong photos? Plant them and count (printed, never asserted).

    .venv/bin/python research/audit_noise.py [--sibling 0.02] [--random 0.01] [--image 0.01] [--seed 0]
                                             [--image-weight W]

Takes the curated catalog (artifacts/ingest, after `dvc repro features`), relabels a share of products to a
plausible sibling articleType (same subCategory) and another share to a random articleType (parents follow the
new type, as a merchandiser's re-filing would), swaps the photo of a third share for one of another
subCategory (title and label still agree: the listing shows the wrong product), runs the audit exactly as the
stage does (`components.pipeline.audit.audit_products`), and prints per noise type: its share of the top 100
and recall at the audit's cut-off (`suspect`). The catalog's own mislabels count as false positives here, so
precision is a lower bound. Also: how many non-suspects are less trusted than the most trusted suspect (0 by
construction: one ranking score decides both).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import load_params
from components.encoders import load_encoders
from components.label_noise import plant_image_swaps, plant_label_flips
from components.pipeline.audit import audit_products

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sibling", type=float, default=0.02)
    ap.add_argument("--random", type=float, default=0.01)
    ap.add_argument("--image", type=float, default=0.01, help="share of products given another class's photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-weight", type=float, help="override params audit.image_weight (0: no image witness)")
    args = ap.parse_args()
    os.chdir(ROOT)
    params = load_params()
    audit_params = params.audit if args.image_weight is None else \
        dataclasses.replace(params.audit, image_weight=args.image_weight)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    images = np.load(Path(params.paths.ingest) / "images.npy", mmap_mode="r")
    noisy = plant_label_flips(df, args.sibling, args.random, args.seed)
    noisy, pixels = plant_image_swaps(noisy, images, args.image, args.seed)
    t0 = time.perf_counter()
    res = audit_products(noisy.drop(columns="noise"), pixels, load_encoders(params.paths.features), audit_params,
                         params.train_baseline.tfidf, params.catalog.categorical, params.seed)
    seconds = time.perf_counter() - t0
    table = res.table.astype({"id": str}).merge(noisy[["id", "noise"]].astype({"id": str}), on="id")
    top = table.head(100)
    counts = {k: int((noisy.noise == k).sum()) for k in ("sibling", "random", "image")}
    print(f"{len(df)} products, planted {counts['sibling']} sibling and {counts['random']} random flips and "
          f"{counts['image']} swapped photos; image_weight {audit_params.image_weight}; audit {seconds:.0f} s; "
          f"{int(table.suspect.sum())} suspects at the cut-off")
    print(f"precision@100, any planted fault: {(top.noise != '').mean():.2f}")
    for kind in ("sibling", "random", "image"):
        planted = table[table.noise == kind]
        flagged = table[table.suspect]
        print(f"{kind:>7}: share of the top 100 {(top.noise == kind).mean():.2f}, "
              f"recall at cut-off {planted.suspect.mean():.2f} ({int(planted.suspect.sum())}/{len(planted)}); "
              f"of all suspects {(flagged.noise == kind).mean():.2%} are this kind")
    print(f"precision at cut-off (suspects that are planted faults): {(table[table.suspect].noise != '').mean():.2f}")
    most_trusted_suspect = table.loc[table.suspect, "label_quality"].max()
    below = int(((~table.suspect) & (table.label_quality < most_trusted_suspect)).sum())
    print(f"non-suspects less trusted than the most trusted suspect: {below}")


if __name__ == "__main__":
    main()
