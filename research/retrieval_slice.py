"""Where title -> photo search fails: look-alike listings, colour words, brands (printed, never asserted).

    .venv/bin/python research/retrieval_slice.py WORKSPACE [--queries 2000] [--seed 0] [--out F] [--fusion-space]

WORKSPACE: a finished run (its fusion network, its retrieval towers unless --fusion-space, and ingest outputs).
Queries are seeded test-split products with a title and a photo; the gallery is every val and test photo (none
trained on), as the `unseen` gallery of evaluate's KAGL protocol. A query hits when its own product's photo is in
the top 10.
1. Look-alike listings: queries whose exact title another gallery product shares, and queries with a "twin"
   (another gallery product of the same articleType, colour and brand), against the rest; for those, also
   "a twin or itself in the top 10".
2. Colour words: queries whose title names their own colour (`baseColour`); the share of the top 10 with that
   colour, then the same titles with the colour word swapped for another common colour: the share that follows
   the new word and the share left on the old colour.
3. Brands: the share of the top 10 from the query's brand, for brands frequent in training and rare ones.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.catalog import TITLE  # noqa: E402
from components.checkpoint import fusion_checkpoint  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import cached_products  # noqa: E402
from components.models.retrieval import towers_file  # noqa: E402
from components.serving.categorizer import Categorizer, load_images  # noqa: E402
from components.serving.search import find_towers  # noqa: E402

K = 10


def embed(cat: Categorizer, frame: pd.DataFrame, images) -> dict[str, np.ndarray]:
    _, emb = cat.predict(frame, images, embeddings=True)
    return {k: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for k, v in emb.items()}


def top_k(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, K) gallery rows, best first."""
    scores = queries @ gallery.T
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def share(mask: np.ndarray) -> str:
    return f"{mask.mean():.3f}" if mask.size else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fusion-space", action="store_true", help="the fusion network's space, not the retrieval towers'")
    args = ap.parse_args()
    out_file = args.out.resolve() if args.out else None
    os.chdir(args.workspace)
    params = load_params()
    cat = Categorizer.from_checkpoint(fusion_checkpoint(params.paths.train_fusion))
    towers = None if args.fusion_space else find_towers(cat, towers_file(params.paths.train_retrieval))
    if towers is not None:  # the space search serves
        cat = Categorizer(towers.with_towers_of(cat.model), cat.encoders, cat.meta, cat.device, cat.image_size)
    print(f"space: {'retrieval towers' if towers is not None else 'fusion network'}")
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    split, photo = df["split"].to_numpy(), df["has_image"].to_numpy(bool)
    gallery_rows = np.flatnonzero(np.isin(split, ["val", "test"]) & photo)
    frame, images = cached_products(params.paths.ingest, gallery_rows)
    g = embed(cat, frame, images)
    rng = np.random.default_rng(args.seed)
    is_test = np.flatnonzero((split[gallery_rows] == "test") & frame[TITLE].fillna("").astype(str).ne("").to_numpy())
    q = np.sort(rng.choice(is_test, min(args.queries, len(is_test)), replace=False))  # positions in the gallery
    top = top_k(g["text"][q], g["image"])
    own = (top == q[:, None]).any(axis=1)
    res: dict[str, object] = {"queries": len(q), "gallery": len(gallery_rows), "own_hit@10": float(own.mean())}
    print(f"{len(q)} test titles against {len(gallery_rows)} val+test photos: own photo in the top {K}: "
          f"{own.mean():.3f}")

    # 1. look-alike listings
    title = frame[TITLE].fillna("").astype(str).str.lower().str.strip().to_numpy()
    twin_key = (frame["articleType"].astype(str) + "|" + frame["baseColour"].fillna("").astype(str) + "|"
                + frame["brandName"].fillna("").astype(str)).to_numpy()
    same_title = pd.Series(title).map(pd.Series(title).value_counts()).to_numpy() > 1
    twins = pd.Series(twin_key).map(pd.Series(twin_key).value_counts()).to_numpy() > 1
    twin_hit = np.array([(twin_key[top[i]] == twin_key[j]).any() for i, j in enumerate(q)])
    for name, m in (("exact title shared", same_title[q]), ("a twin (type+colour+brand)", twins[q] & ~same_title[q]),
                    ("no twin", ~twins[q])):
        res[f"lookalike: {name}"] = {"queries": int(m.sum()), "own_hit@10": float(own[m].mean()) if m.any() else None,
                                     "twin_or_own_hit@10": float(twin_hit[m].mean()) if m.any() else None}
        print(f"  {name:>28}: {int(m.sum()):>5} queries, own photo in the top {K} {share(own[m])}, a twin or itself "
              f"{share(twin_hit[m])}")

    # 2. colour words
    colour = frame["baseColour"].fillna("").astype(str).to_numpy()
    common = [c for c in pd.Series(colour[colour != ""]).value_counts().index[:8]]
    named = np.array([bool(colour[j]) and re.search(rf"\b{re.escape(colour[j])}\b", frame[TITLE].iloc[j], re.I)
                      is not None for j in q])
    cq = q[named]
    same_colour = (colour[top[named]] == colour[cq][:, None]).mean() if len(cq) else float("nan")
    swapped_to = np.array([next(c for c in common[(k % len(common)):] + common if c != colour[j])
                           for k, j in enumerate(cq)])
    edited = frame.iloc[cq].copy()
    edited[TITLE] = [re.sub(rf"\b{re.escape(colour[j])}\b", new, frame[TITLE].iloc[j], flags=re.I)
                     for j, new in zip(cq, swapped_to, strict=True)]
    e = embed(cat, edited.reset_index(drop=True), load_images([None] * len(cq), *cat.image_size))  # words only
    top_new = top_k(e["text"], g["image"])
    follows = (colour[top_new] == swapped_to[:, None]).mean() if len(cq) else float("nan")
    stays = (colour[top_new] == colour[cq][:, None]).mean() if len(cq) else float("nan")
    res["colour words"] = {"queries": int(len(cq)), "top10_same_colour": float(same_colour),
                           "swapped_top10_new_colour": float(follows), "swapped_top10_old_colour": float(stays)}
    print(f"  colour named in {len(cq)} titles: {same_colour:.3f} of the top {K} have that colour; with the word "
          f"swapped, {follows:.3f} have the new colour and {stays:.3f} keep the old one")

    # 3. brands
    brand = frame["brandName"].fillna("").astype(str).to_numpy()
    train_counts = df.loc[split == "train", "brandName"].fillna("").astype(str).value_counts()
    freq = np.array([train_counts.get(brand[j], 0) for j in q])
    same_brand = (brand[top] == brand[q][:, None]).mean(axis=1)
    for name, m in (("brands with >= 100 train products", freq >= 100), ("20-99", (freq >= 20) & (freq < 100)),
                    ("< 20", freq < 20)):
        res[f"brand: {name}"] = {"queries": int(m.sum()), "top10_same_brand": float(same_brand[m].mean())
                                 if m.any() else None, "own_hit@10": float(own[m].mean()) if m.any() else None}
        print(f"  {name:>34}: {int(m.sum()):>5} queries, {share(same_brand[m])} of the top {K} from the brand, own "
              f"photo {share(own[m])}")
    if out_file:
        out_file.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
