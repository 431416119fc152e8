"""The catalog index the review pages ask for products: "a few products filed under this path", "this product",
and search ("products matching these words / this photo / like this product", with filters). Examples and
lookups are a table over ingest's products; search goes to the model's search index (components.serving.search),
opened on the first search (loading the model takes seconds and memory a station that only reviews never needs).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from components.catalog import ID, IMAGE, TITLE


class SearchUnavailable(RuntimeError):
    """No model or no search index for it: the message says what to run."""


class CatalogIndex:
    def __init__(self, products: pd.DataFrame, levels: list[str], root: Path,
                 open_searcher: Callable[[], object] | None = None) -> None:
        """`open_searcher`: returns a `components.serving.search.Searcher` (raises with a message when there is
        none); called once, on the first search."""
        keep = [c for c in (ID, TITLE, IMAGE, *levels) if c in products.columns]
        frame = products[keep].copy()
        frame[ID] = frame[ID].astype(str)
        self.titles = dict(zip(frame[ID], frame[TITLE].astype(str), strict=True)) if TITLE in frame else {}
        if "has_image" in products.columns:  # examples are for looking at: only products with a picture
            frame = frame[products["has_image"].to_numpy()]
        self.frame = frame.set_index(ID, drop=False)
        self.levels = list(levels)
        self.root = str(Path(root).resolve())
        self._by_path = {tuple(k if isinstance(k, tuple) else (k,)): v
                         for k, v in self.frame.groupby(self.levels, sort=False).groups.items()}
        self._open, self._searcher, self._lock = open_searcher, None, threading.Lock()
        self._facets: dict[str, list[str]] | None = None

    def _row(self, r: pd.Series) -> dict:
        return {"product_id": str(r[ID]), "title": str(r.get(TITLE, "")), "image": str(r.get(IMAGE, "") or ""),
                "image_root": self.root}

    def examples(self, path: list[str], k: int) -> list[dict]:
        """Up to k products filed under `path` (the first ones in catalog order: stable between views)."""
        ids = self._by_path.get(tuple(path), [])[:k]
        return [self._row(self.frame.loc[i]) for i in ids]

    def product(self, product_id: str) -> dict | None:
        return self._row(self.frame.loc[product_id]) if product_id in self.frame.index else None

    # --- search ------------------------------------------------------------------------------------------------

    def searcher(self):
        if self._open is None:
            raise SearchUnavailable("search is not set up for this station")
        with self._lock:
            if self._searcher is None:
                try:
                    self._searcher = self._open()
                except (OSError, ValueError) as exc:  # no model, no index, an index of another model
                    raise SearchUnavailable(str(exc)) from exc
            return self._searcher

    def facets(self) -> dict[str, list[str]]:
        """Filterable columns and their values (for the page's pickers)."""
        if self._facets is None:  # the same for every page view of this index
            f = self.searcher().index.facets
            self._facets = {c: sorted(v for v in f[c].unique() if v) for c in f.columns}
        return self._facets

    def search(self, text: str = "", photo: bytes | None = None, like: str = "",
               filters: dict[str, list[str]] | None = None, k: int = 24) -> list[dict]:
        """Products matching words, a photo, or like a catalog product (words may steer a photo or a product);
        each: product_id, title, score, its facets, and whether the page can show its photo. ValueError for a
        query that cannot run (nothing given, an unreadable photo, an unknown filter)."""
        s = self.searcher()
        query = s.query(text, photo, like=like)
        hits = s.search(query, k, filters or {}, exclude=(like,) if like else ())
        out = []
        for rec in hits.to_dict(orient="records"):
            pid = str(rec.pop("id"))
            out.append({"product_id": pid, "title": self.titles.get(pid, ""), "score": float(rec.pop("score")),
                        "photo": self.product(pid) is not None, "facets": rec})
        return out
