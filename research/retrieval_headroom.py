"""What the retrieval towers' vectors miss, on validation (printed, never asserted; the test split is never read).

    .venv/bin/python research/retrieval_headroom.py WORKSPACE [--towers FILE | --fusion-space] [--bank 8000]

WORKSPACE: a finished run up to train_retrieval; FILE: another towers file to judge (a recipe's), default the
run's own; --fusion-space: the fusion network's own vectors. Validation products with a photo and a title, as
train_retrieval's epoch choice sees them (title -> photo and photo -> title R@10 among the 4k val products):
1. Headroom by metadata: the R@10 if the vectors knew a column perfectly: each query's candidates of the same
   value (its product's, as the catalog records it) ranked above all others, cumulatively (articleType, then
   gender, baseColour, brandName).
2. How plainly the vectors name a column: a logistic probe fit on train products' vectors, accuracy on val (the
   photo's colour histogram alone and beside the photo vector, for colour).
3. Querybank normalisation (Bogolin et al. 2022, inverted softmax): a gallery item's score less lambda x its
   log-sum-exp similarity (at beta) to a bank of train-split queries, which pushes down "hub" items close to
   every query; a grid of beta and lambda.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import metrics as M  # noqa: E402
from components.checkpoint import fusion_checkpoint, load_checkpoint  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import SPLIT_CODES, load_arrays  # noqa: E402
from components.models.retrieval import load_towers, towers_file  # noqa: E402
from components.pipeline.evaluate import catalog_vectors  # noqa: E402
from components.pipeline.train_retrieval import colours  # noqa: E402

COLUMNS = ("articleType", "gender", "baseColour", "brandName")


def r_at_10(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Share of queries (rows) whose best relevant item ranks in the top 10."""
    best = np.where(relevant, scores, -np.inf).max(1)
    return float(((scores > best[:, None]).sum(1) < 10).mean())


def offsets(gallery: np.ndarray, bank: np.ndarray, beta: float) -> np.ndarray:
    """Per gallery item: log-sum-exp of beta x its similarity to every bank query, over beta."""
    return logsumexp(beta * (bank @ gallery.T), axis=0) / beta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--towers", type=Path, help="a towers file (default: the workspace's train_retrieval output)")
    ap.add_argument("--fusion-space", action="store_true", help="the fusion network's vectors, no towers")
    ap.add_argument("--bank", type=int, default=8000, help="train-split queries in the querybank")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    towers_path = args.towers.resolve() if args.towers else None
    os.chdir(args.workspace)
    params, device = load_params(), torch.device("cpu")
    model, _, _ = load_checkpoint(fusion_checkpoint(params.paths.train_fusion), device)
    if not args.fusion_space:
        model = load_towers(towers_path or towers_file(params.paths.train_retrieval)).to(device).with_towers_of(model)
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    arrays = arrays.subset(np.arange(len(arrays)))
    image, text = catalog_vectors(model, arrays, device)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    photo, titled = arrays.has_image.astype(bool), (arrays.tokens != 0).any(1)
    val = np.flatnonzero((split == SPLIT_CODES["val"]) & photo & titled)
    train = np.flatnonzero((split == SPLIT_CODES["train"]) & photo & titled)
    rel = M.relevance(df["title_norm"].to_numpy()[val], df["image_md5"].to_numpy()[val])
    base = text[val] @ image[val].T  # title -> photo; its transpose is photo -> title
    print(f"{len(val)} val products: title->photo R@10 {r_at_10(base, rel):.4f}, photo->title "
          f"{r_at_10(base.T, rel.T):.4f}")

    print("1. headroom: R@10 if the vectors knew these columns perfectly (cumulative)")
    known = base.copy()
    for col in COLUMNS:
        v = df[col].fillna("").astype(str).to_numpy()[val]
        known = known + 10.0 * (v[:, None] == v[None, :])  # cosines span 2: a value match outranks any cosine
        print(f"   + {col:12s} title->photo {r_at_10(known, rel):.4f}  photo->title {r_at_10(known.T, rel.T):.4f}")

    print("2. linear probes (fit on 15,000 train products, accuracy on val; the 40 commonest values)")
    rng = np.random.default_rng(args.seed)
    fit = np.sort(rng.choice(train, min(15000, len(train)), replace=False))
    hist = {name: colours(arrays.images[rows]).numpy() for name, rows in (("fit", fit), ("val", val))}
    for col in COLUMNS[1:]:
        y = df[col].fillna("").astype(str).to_numpy()
        common = pd.Series(y[fit]).value_counts().index[:40]
        f, t = np.isin(y[fit], common), np.isin(y[val], common)
        feats = {"photo vector": (image[fit], image[val]), "title vector": (text[fit], text[val])}
        if col == "baseColour":
            feats["colour histogram"] = (hist["fit"], hist["val"])
            feats["histogram + photo vector"] = (np.hstack([hist["fit"], image[fit]]), np.hstack([hist["val"],
                                                                                                  image[val]]))
        for name, (a, b) in feats.items():
            clf = LogisticRegression(max_iter=500, C=10.0).fit(a[f], y[fit][f])
            print(f"   {col:10s} {name:26s} {clf.score(b[t], y[val][t]):.3f}")

    print("3. querybank normalisation (bank: train-split titles for photo galleries, photos for title galleries)")
    bank = np.sort(rng.choice(train, min(args.bank, len(train)), replace=False))
    for beta in (30.0, 50.0, 80.0, 120.0):
        off_image, off_text = offsets(image[val], text[bank], beta), offsets(text[val], image[bank], beta)
        for lam in (0.25, 0.5, 1.0):
            t2i = r_at_10(base - lam * off_image[None, :], rel)
            i2t = r_at_10(base.T - lam * off_text[None, :], rel.T)
            print(f"   beta {beta:5.0f} lambda {lam:4.2f}: title->photo {t2i:.4f} photo->title {i2t:.4f} "
                  f"mean {(t2i + i2t) / 2:.4f}")


if __name__ == "__main__":
    main()
