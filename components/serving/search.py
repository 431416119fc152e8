"""Product search in the shared image/text embedding space.

    deepfusion search --build [CATALOG_DIR]                  index a catalog for the current model (default: paths.raw)
    deepfusion search --text "red running shoes" [-k 10]     products whose picture or title match the words
    deepfusion search --image photo.jpg [--text "in red"]    a photo, optionally steered by words
    deepfusion search --like 15970                           products like a catalog product
    ... --where articleType="Casual Shoes" --where baseColour=Red,Blue   filters (repeatable; values: any of)

One index per model version: the file is named after the fusion network's weights (`model_key`), so a retrained
model never answers from vectors another model made, and a model's index is built once. A product is scored by the
best of its photo and title vectors, so products without a photo are still found. Filters run on the catalog's label
levels and categorical columns (the catalog schema's), the model's predicted path standing in for unlabelled rows.
The vectors sit behind a small backend interface (`VectorBackend`): exact inner products here, which answer a
44k-product query in a few ms on one core (`scripts/bench_search.py` measures where an approximate index pays).
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from components.atomic_io import atomic_write_bytes
from components.catalog import TITLE, CatalogError, read_catalog
from components.checkpoint import CheckpointError
from components.config import CatalogSchema, ConfigError
from components.data import iterate
from components.models.retrieval import RetrievalError, RetrievalTowers, load_towers, space_fingerprint, towers_file
from components.models.runtime import autocast, trim_padding
from components.serving.categorizer import Categorizer, load_images
from components.serving.predict import catalog_schema, categorize, default_model, load_categorizer

log = logging.getLogger(__name__)

FORMAT = "deepfusion-search-index/2"


class SearchIndexError(ValueError):
    """The index is missing, unreadable, or was built by another model."""


# --- the vector backend: the one place an approximate engine would plug in ------------------------------------


class VectorBackend(Protocol):
    """Nearest rows of one vector matrix by inner product, among the allowed rows."""

    def __init__(self, vectors: np.ndarray) -> None: ...

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, scores) of the k best rows, best first; rows of NaN vectors (no photo) never match."""
        ...


class ExactBackend:
    """Brute force over the rows that have a vector: exact, no build step, O(N·D) per query."""

    def __init__(self, vectors: np.ndarray) -> None:
        valid = ~np.isnan(vectors).any(axis=1) if len(vectors) else np.zeros(0, bool)
        self.rows = np.flatnonzero(valid)
        self.matrix = np.ascontiguousarray(vectors[valid], dtype=np.float32)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores = self.matrix @ query.astype(np.float32)
        if allowed is not None:
            scores = np.where(allowed[self.rows], scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return self.rows[best], scores[best]


BACKENDS: dict[str, type] = {"exact": ExactBackend}


# --- the index ---------------------------------------------------------------------------------------------------


@dataclass
class Index:
    ids: np.ndarray  # (N,) product ids (int64 or str)
    image: np.ndarray  # (N, D) float32 unit vectors, NaN rows for products without a photo
    text: np.ndarray  # (N, D) float32 unit vectors of the titles
    facets: pd.DataFrame  # (N, columns) str: what filters can ask for ("" = unknown)
    model_key: str  # the model whose vectors these are (`model_key`)
    backend: str = "exact"

    def save(self, path: Path) -> None:
        manifest = {"format": FORMAT, "model_key": self.model_key, "backend": self.backend,
                    "products": int(len(self.ids)), "facets": list(self.facets.columns)}
        buf = io.BytesIO()
        np.savez(buf, ids=self.ids, image=self.image, text=self.text, manifest=np.array(json.dumps(manifest)),
                 **{f"facet_{i}": self.facets[c].to_numpy(dtype=str) for i, c in enumerate(self.facets.columns)})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Index:
        if not path.is_file():
            raise SearchIndexError(f"{path}: no search index for this model; build it with `deepfusion search --build`")
        try:
            with np.load(path, allow_pickle=False) as z:
                manifest = json.loads(str(z["manifest"]))
                if manifest.get("format") != FORMAT:
                    raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
                facets = pd.DataFrame({c: z[f"facet_{i}"] for i, c in enumerate(manifest["facets"])})
                rows = {len(z["ids"]), len(z["image"]), len(z["text"]), len(facets)}
                if len(rows) > 1:  # an index built before predict kept every chunk's ids named the wrong products
                    raise ValueError(f"ids, vectors and facets of different lengths {sorted(rows)}")
                return cls(z["ids"], z["image"], z["text"], facets, manifest["model_key"], manifest["backend"])
        except (OSError, ValueError, KeyError) as exc:
            raise SearchIndexError(f"{path}: not a readable search index ({exc}); rebuild it with "
                              "`deepfusion search --build`") from exc


def model_key(cat: Categorizer, towers: RetrievalTowers | None = None) -> str:
    """Names the embedding space: a hash of the fusion network's weights as loaded (whatever the source: a
    checkpoint, a stack, a registered model), whether its image tower runs in int8 (the stack's serving
    form: its photo vectors differ slightly from the fp32 ones), and the retrieval towers on top, if any."""
    h = hashlib.sha256()
    for name, value in sorted(cat.model.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            continue  # an int8 layer's packed parameters: its float neighbours change with every retrain anyway
        t = (value.int_repr() if value.is_quantized else value).detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    int8 = "fusion" in getattr(getattr(cat, "experts", None), "int8", ())
    return h.hexdigest()[:16] + ("-int8" if int8 else "") + (f"-r{towers.key()}" if towers else "")


def index_path(folder: str | Path, cat: Categorizer, towers: RetrievalTowers | None = None) -> Path:
    """Where the index of `cat`'s embedding space (with `towers`) lives under params paths.search."""
    return Path(folder) / f"{model_key(cat, towers)}.npz"


def find_towers(cat: Categorizer, path: str | Path | None) -> RetrievalTowers | None:
    """The retrieval towers at `path` when they were trained on this model's fusion network; otherwise None, and
    search answers in the fusion space itself (e.g. a registered model older than the pipeline's towers). A
    registered model carries its own (checked when it loaded), which wins."""
    carried = getattr(cat, "retrieval_towers", None)
    if carried is not None:
        return carried.to(cat.device)
    if path is None or not Path(path).is_file():
        log.info("search: no retrieval towers at %s; searching the fusion network's own space", path)
        return None
    towers = load_towers(path)
    if towers.fingerprint != space_fingerprint(cat.model):
        log.warning("search: %s was trained on another fusion network (rerun `dvc repro train_retrieval` for this "
                    "one); searching the fusion network's own space", path)
        return None
    return towers.to(cat.device)


def facet_frame(frame: pd.DataFrame, pred: pd.DataFrame, schema: CatalogSchema, levels: tuple[str, ...]
                ) -> pd.DataFrame:
    """The filterable columns of the predicted rows: each label level (the catalog's label, else the model's
    prediction) and each categorical column the schema declares."""
    src = frame.set_index(frame["id"].astype(str))
    ids = pred["id"].astype(str)
    out = {}
    for lvl in levels:
        given = src[lvl].reindex(ids).fillna("").astype(str).to_numpy() if lvl in src else np.full(len(ids), "")
        out[lvl] = np.where(given != "", given, pred[lvl].fillna("").astype(str).to_numpy())
    for col in schema.categorical:
        if col in src:
            out[col] = src[col].reindex(ids).fillna("").astype(str).to_numpy()
    return pd.DataFrame(out)


def build_index(folder: Path, cat: Categorizer, schema: CatalogSchema | None = None, backend: str = "exact",
                towers: RetrievalTowers | None = None) -> Index:
    """Every product of a catalog folder as photo and title vectors, with its facets. The vectors come from the
    fusion network alone (a stack's experts add nothing to them and would cost most of the build), seen through
    the retrieval towers when there are some (a second pass); the path that stands in for a missing label is the
    fusion network's."""
    schema = schema or catalog_schema(cat)
    read = read_catalog(folder, schema, require_labels=False)
    fusion = Categorizer(cat.model, cat.encoders, cat.meta, cat.device, cat.image_size)
    pred, emb = categorize(folder, fusion, embeddings=towers is None, read=read)
    if towers is not None:
        space = Categorizer(towers.with_towers_of(cat.model), cat.encoders, cat.meta, cat.device, cat.image_size)
        _, emb = categorize(folder, space, embeddings=True, read=read)
    pred = pred[~pred["status"].str.startswith("rejected")].reset_index(drop=True)
    return Index(emb["ids"], emb["image"].astype(np.float32), emb["text"].astype(np.float32),
                 facet_frame(read.frame, pred, schema, cat.levels), model_key(cat, towers), backend)


# --- queries -----------------------------------------------------------------------------------------------------


def parse_where(items: list[str]) -> dict[str, list[str]]:
    """["articleType=Casual Shoes", "baseColour=Red,Blue"] -> {column: [values]} (repeated columns add up)."""
    out: dict[str, list[str]] = {}
    for item in items:
        col, sep, values = item.partition("=")
        if not sep or not col.strip() or not values.strip():
            raise ValueError(f"--where {item!r}: expected COLUMN=VALUE[,VALUE...]")
        out.setdefault(col.strip(), []).extend(v.strip() for v in values.split(",") if v.strip())
    return out


class Facets:
    """The filterable columns, coded once (lower-cased values -> small integers): a filter is then an integer
    comparison per row, not a string one (the difference between ~2 and ~20 ms a query at 44k products)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.columns = list(frame.columns)
        self.codes: dict[str, np.ndarray] = {}
        self.known: dict[str, dict[str, tuple[int, str]]] = {}  # column -> lower value -> (code, as written)
        for col in self.columns:
            values = frame[col].to_numpy(dtype=str)
            codes, uniques = pd.factorize(np.char.lower(values))
            self.codes[col] = codes
            first = values[np.unique(codes, return_index=True)[1]]  # each value as its first row writes it
            self.known[col] = {u: (c, str(first[c])) for c, u in enumerate(uniques) if u}

    def mask(self, filters: dict[str, list[str]]) -> np.ndarray | None:
        """Rows matching every filter (a value of any listed ones; case-insensitive), None for no filter. An
        unknown column or value is an error that says what exists, so a typo never silently finds nothing."""
        mask = None
        for col, wanted in filters.items():
            if not wanted:
                continue
            if col not in self.known:
                raise ValueError(f"filter {col!r}: not a filterable column; use one of {', '.join(self.columns)}")
            known = self.known[col]
            for w in wanted:
                if w.lower() not in known:
                    close = difflib.get_close_matches(w, [v for _, v in known.values()], n=3, cutoff=0.6)
                    raise ValueError(f"filter {col}={w!r}: no product has it" +
                                     (f"; did you mean {', '.join(close)}?" if close else ""))
            m = np.isin(self.codes[col], [known[w.lower()][0] for w in wanted])
            mask = m if mask is None else mask & m
        return mask


def filter_mask(facets: pd.DataFrame, filters: dict[str, list[str]]) -> np.ndarray | None:
    """`Facets(facets).mask(filters)`, for a one-off."""
    return Facets(facets).mask(filters)


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


class VectorSearch:
    """An index with its engines: ranks products for a query vector, with filters."""

    def __init__(self, index: Index) -> None:
        if index.backend not in BACKENDS:
            raise SearchIndexError(f"index backend {index.backend!r} is not installed here; one of {list(BACKENDS)}")
        self.index = index
        self.engines = {m: BACKENDS[index.backend](getattr(index, m)) for m in ("image", "text")}
        self.row = {str(i): n for n, i in enumerate(index.ids)}
        self.facets = Facets(index.facets)

    def like(self, product_id: str) -> np.ndarray:
        """A catalog product as a query: its photo and title vectors together."""
        if str(product_id) not in self.row:
            raise ValueError(f"product {product_id}: not in the search index")
        n = self.row[str(product_id)]
        vecs = [v for v in (self.index.image[n], self.index.text[n]) if not np.isnan(v).any()]
        return unit(np.sum(vecs, axis=0))

    def search(self, query: np.ndarray, k: int = 10, filters: dict[str, list[str]] | None = None,
               exclude: tuple[str, ...] = ()) -> pd.DataFrame:
        """The k best products (id, score, facets), score = max(cosine to the photo, cosine to the title). The
        best k by that maximum are among the best k of either list, so merging the two lists is exact."""
        allowed = self.facets.mask(filters or {})
        want = k + len(exclude)
        found: dict[int, float] = {}
        for engine in self.engines.values():
            rows, scores = engine.search(query, want, allowed)
            for r, s in zip(rows.tolist(), scores.tolist(), strict=True):
                found[r] = max(s, found.get(r, -np.inf))
        skip = {self.row[e] for e in exclude if e in self.row}
        ranked = sorted(((s, r) for r, s in found.items() if r not in skip), key=lambda t: (-t[0], t[1]))[:k]
        rows = np.array([r for _, r in ranked], dtype=np.int64)
        out = pd.DataFrame({"id": self.index.ids[rows], "score": np.round([s for s, _ in ranked], 4)})
        return pd.concat([out, self.index.facets.iloc[rows].reset_index(drop=True)], axis=1)


class Searcher(VectorSearch):
    """A model and its index: turns text, a photo, or a catalog product into ranked products."""

    def __init__(self, cat: Categorizer, index: Index, towers: RetrievalTowers | None = None) -> None:
        if index.model_key != model_key(cat, towers):
            raise SearchIndexError(f"the index was built by model {index.model_key}, this model is "
                                   f"{model_key(cat, towers)}: rebuild it with `deepfusion search --build`")
        super().__init__(index)
        self.cat, self.towers = cat, towers
        self.space = towers.with_towers_of(cat.model) if towers is not None else cat.model

    # A query vector comes from its modality's tower alone: the towers do not read each other (fusion comes
    # after them), so the rest of the network would change nothing; for words it would cost most of the query
    # (the photo tower on a blank image). tests/model checks these equal the vectors the index holds.

    def _tower(self, modality: str, frame: pd.DataFrame, images) -> np.ndarray:
        batch = trim_padding(next(iterate(self.cat.arrays(frame, images), 1, self.cat.device)))
        tower = self.space.towers[modality]
        with torch.no_grad(), autocast(self.cat.device):
            v = tower(batch["tokens"], batch["subwords"]) if modality == "text" else tower(batch["image"], None)
        return torch.nn.functional.normalize(v.float(), dim=-1)[0].cpu().numpy()

    def embed_text(self, text: str) -> np.ndarray:
        h, w = self.cat.image_size
        return self._tower("text", pd.DataFrame({"id": [0], TITLE: [text]}), load_images([None], h, w))

    def embed_photo(self, data: bytes) -> np.ndarray:
        h, w = self.cat.image_size
        images = load_images([data], h, w)  # bytes only: a query never reads a path on this machine
        if images.status[0] != "ok":
            raise ValueError(f"the photo cannot be used: {images.status[0]}")
        return self._tower("image", pd.DataFrame({"id": [0], TITLE: [""]}), images)

    def query(self, text: str = "", photo: bytes | None = None, photo_weight: float = 0.5, like: str = ""
              ) -> np.ndarray:
        """One unit query vector: the text's, the photo's, or their weighted sum (a photo plus "in red"); with
        `like`, a catalog product's vector, steered by the text when there is one."""
        if like:
            base = self.like(like)
            return unit(base + unit(self.embed_text(text.strip()))) if text.strip() else base
        parts = []
        if photo:
            parts.append(photo_weight * unit(self.embed_photo(photo)))
        if text.strip():
            parts.append((1 - photo_weight if photo else 1.0) * unit(self.embed_text(text.strip())))
        if not parts:
            raise ValueError("nothing to search for: give words, a photo, or both")
        return unit(np.sum(parts, axis=0))


def open_searcher(model: str, index: Path | None = None, search_dir: str | Path | None = None,
                  towers: str | Path | None = None) -> Searcher:
    """The model, its retrieval towers (`find_towers`) and its index (`index`, else the model's own file under
    `search_dir`)."""
    cat = load_categorizer(model)
    fitted = find_towers(cat, towers)
    return Searcher(cat, Index.load(index or index_path(search_dir, cat, fitted)), fitted)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="deepfusion search", description=__doc__.split("\n")[0])
    ap.add_argument("--build", nargs="?", const="", metavar="CATALOG_DIR",
                    help="index a catalog folder's photos and titles (default: params paths.raw)")
    ap.add_argument("--text", default="", help="words: find products whose photo or title match them")
    ap.add_argument("--image", type=Path, help="a photo: find products that look like it (with --text: steered)")
    ap.add_argument("--like", metavar="ID", help="find products like this catalog product")
    ap.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE[,VALUE]",
                    help="keep products whose COLUMN is one of the values (a label level or categorical column)")
    ap.add_argument("--photo-weight", type=float, default=0.5, help="photo vs words when both are given (0.5)")
    ap.add_argument("-k", type=int, default=10, help="how many products to list (default 10)")
    ap.add_argument("--json", action="store_true", help="print the hits as JSON lines")
    ap.add_argument("--index", type=Path, help="index file (default: params paths.search/<model key>.npz)")
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="exact", help="vector engine of a new index")
    ap.add_argument("--model", help="checkpoint, stack, or models:/NAME@ALIAS (default: the pipeline's stack)")
    ap.add_argument("--towers", type=Path, help="retrieval towers (default: params paths.train_retrieval/"
                    "towers.pt, used when trained on this model's fusion network)")
    args = ap.parse_args(argv)
    if args.build is None and not (args.text or args.image or args.like):
        ap.error("give --build, or something to search for: --text, --image or --like")
    try:
        filters = parse_where(args.where)
        search_dir, towers_path = None, args.towers
        if args.index is None or args.build == "" or towers_path is None:
            from components.config import load_params  # raises ConfigError outside the project root

            try:
                paths = load_params().paths
            except ConfigError:
                if args.index is None or args.build == "":
                    raise
                paths = None  # an index and a model given outside a project: no default towers either
            if paths is not None:
                search_dir = paths.search
                args.build = args.build if args.build != "" else paths.raw
                towers_path = towers_path or towers_file(paths.train_retrieval)
        cat = load_categorizer(args.model or default_model())
        towers = find_towers(cat, towers_path)
        path = args.index or index_path(search_dir, cat, towers)
        if args.build:
            t0 = time.perf_counter()
            index = build_index(Path(args.build), cat, backend=args.backend, towers=towers)
            index.save(path)
            print(f"indexed {len(index.ids)} products in {time.perf_counter() - t0:.1f} s -> {path}")
            return 0
        searcher = Searcher(cat, Index.load(path), towers)
        t0 = time.perf_counter()
        photo = args.image.read_bytes() if args.image and not args.like else None  # the user's own file
        query = searcher.query(args.text, photo, args.photo_weight, like=args.like or "")
        hits = searcher.search(query, args.k, filters, exclude=(args.like,) if args.like else ())
        ms = (time.perf_counter() - t0) * 1000
    except (RetrievalError, CatalogError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for rec in hits.to_dict(orient="records"):
            print(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}))
    else:
        print(hits.to_string(index=False) if len(hits) else "(no product matches)")
    print(f"({ms:.1f} ms, {len(searcher.index.ids)} products)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
