"""Product search in the shared image/text embedding space.

    python -m components.search --build [CATALOG_DIR]          # index the catalog (default: paths.raw)
    python -m components.search --text "red running shoes" [-k 10]
    python -m components.search --image path/to/photo.jpg [-k 10]

The index is brute force over L2-normalised vectors (exact, a few ms per query at 40k products).
A product is scored by the best of its image and title embeddings, so products without an image are
still found by text.
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_write_bytes
from components.catalog import TITLE, CatalogError
from components.checkpoint import CheckpointError
from components.config import ConfigError
from components.serving.categorizer import Categorizer, load_images
from components.serving.predict import categorize, default_model, load_categorizer

log = logging.getLogger(__name__)



@dataclass
class Index:
    ids: np.ndarray  # (N,)
    image: np.ndarray  # (N, D), NaN rows for products without image
    text: np.ndarray  # (N, D)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, ids=self.ids, image=self.image, text=self.text)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Index:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no index; build it with `python -m components.search --build`")
        z = np.load(path)
        return cls(z["ids"], z["image"], z["text"])


def build_index(folder: Path, cat: Categorizer) -> Index:
    pred, emb = categorize(folder, cat, embeddings=True)
    return Index(emb["ids"], emb["image"].astype(np.float32), emb["text"].astype(np.float32))


def top_k(index: Index, query: np.ndarray, k: int) -> pd.DataFrame:
    """Best products for a unit query vector: score = max(cosine to image, cosine to title)."""
    s_img = np.nan_to_num(index.image @ query, nan=-1.0)
    s_txt = index.text @ query
    scores = np.maximum(s_img, s_txt)
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return pd.DataFrame({"id": index.ids[best], "score": scores[best].round(4)})


def embed_text(cat: Categorizer, text: str) -> np.ndarray:
    frame = pd.DataFrame({"id": [0], TITLE: [text]})
    h, w = cat.image_size
    _, emb = cat.predict(frame, load_images([None], h, w), embeddings=True)
    return emb["text"][0]


def embed_image(cat: Categorizer, path: Path) -> np.ndarray:
    frame = pd.DataFrame({"id": [0], TITLE: [""]})
    h, w = cat.image_size
    images = load_images([path.read_bytes() if path.is_file() else None], h, w)  # the user's own file
    if images.status[0] != "ok":
        raise ValueError(f"{path}: {images.status[0]}")
    _, emb = cat.predict(frame, images, embeddings=True)
    return emb["image"][0]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="deepfusion search", description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--build", nargs="?", const="", metavar="CATALOG_DIR",
                   help="index a catalog folder's images and titles (default: params paths.raw)")
    g.add_argument("--text", help="find the products whose pictures match this text")
    g.add_argument("--image", type=Path, help="find the products whose titles match this picture")
    ap.add_argument("-k", type=int, default=10, help="how many products to list (default 10)")
    ap.add_argument("--index", type=Path, help="index file (default: params.paths.search/index.npz)")
    ap.add_argument("--model", help="checkpoint path or models:/NAME@ALIAS (default: the pipeline's fusion model)")
    args = ap.parse_args(argv)
    try:
        if args.index is None or args.build == "":
            from components.config import load_params  # raises ConfigError outside the project root

            paths = load_params().paths
            args.index = args.index or Path(paths.search) / "index.npz"
            args.build = args.build if args.build != "" else paths.raw
        cat = load_categorizer(args.model or default_model())
        if args.build:
            t0 = time.perf_counter()
            index = build_index(Path(args.build), cat)
            index.save(args.index)
            print(f"indexed {len(index.ids)} products in {time.perf_counter() - t0:.1f} s -> {args.index}")
            return 0
        index = Index.load(args.index)
        t0 = time.perf_counter()
        query = embed_text(cat, args.text) if args.text is not None else embed_image(cat, args.image)
        hits = top_k(index, query, args.k)
        ms = (time.perf_counter() - t0) * 1000
    except (CatalogError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(hits.to_string(index=False))
    print(f"({ms:.1f} ms, {len(index.ids)} products)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
