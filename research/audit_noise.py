"""Does the catalog audit find mislabels? Plant them and count (printed, never asserted).

    .venv/bin/python research/audit_noise.py [--sibling 0.02] [--random 0.01] [--seed 0]

Takes the curated catalog (artifacts/ingest, after `dvc repro features`), relabels a share of products
to a plausible sibling articleType (same subCategory) and another share to a random articleType (parents
follow the new type, as a merchandiser's re-filing would), runs the audit exactly as the stage does
(`components.pipeline.audit.audit_products`), and prints per noise type: precision among the top 100 and
recall of the planted flips at the audit's default cut-off (`suspect`). The catalog's own mislabels count
as false positives here, so the precision is a lower bound.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from components.config import load_params
from components.encoders import load_encoders
from components.label_noise import plant_label_flips
from components.pipeline.audit import audit_products

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sibling", type=float, default=0.02)
    ap.add_argument("--random", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.chdir(ROOT)
    params = load_params()
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    noisy = plant_label_flips(df, args.sibling, args.random, args.seed)
    t0 = time.perf_counter()
    res = audit_products(noisy.drop(columns="noise"), load_encoders(params.paths.features), params.audit,
                         params.train_baseline.tfidf, params.catalog.categorical, params.seed)
    seconds = time.perf_counter() - t0
    table = res.table.merge(noisy[["id", "noise"]], on="id")
    top = table.head(100)
    print(f"{len(df)} products, planted {int((noisy.noise == 'sibling').sum())} sibling and "
          f"{int((noisy.noise == 'random').sum())} random flips; audit {seconds:.0f} s; "
          f"{int(table.suspect.sum())} suspects at the default cut-off")
    print(f"precision@100, any planted flip: {(top.noise != '').mean():.2f}")
    for kind in ("sibling", "random"):
        planted = table[table.noise == kind]
        flagged = table[table.suspect]
        print(f"{kind:>7}: precision@100 {(top.noise == kind).mean():.2f} (share of the top 100 that are this kind), "
              f"recall at cut-off {planted.suspect.mean():.2f} ({int(planted.suspect.sum())}/{len(planted)}); "
              f"of all suspects {(flagged.noise == kind).mean():.2%} are this kind")
    print(f"precision at cut-off (suspects that are planted flips): {(table[table.suspect].noise != '').mean():.2f}")


if __name__ == "__main__":
    main()
