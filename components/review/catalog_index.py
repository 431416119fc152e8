"""The small catalog index the review pages ask for example products: "a few products filed under this path"
and "this product". Today a plain table lookup over ingest's products; the search issue puts a real index
behind the same two calls.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.catalog import ID, IMAGE, TITLE


class CatalogIndex:
    def __init__(self, products: pd.DataFrame, levels: list[str], root: Path) -> None:
        keep = [c for c in (ID, TITLE, IMAGE, *levels) if c in products.columns]
        frame = products[keep].copy()
        frame[ID] = frame[ID].astype(str)
        if "has_image" in products.columns:  # examples are for looking at: only products with a picture
            frame = frame[products["has_image"].to_numpy()]
        self.frame = frame.set_index(ID, drop=False)
        self.levels = list(levels)
        self.root = str(Path(root).resolve())
        self._by_path = {tuple(k if isinstance(k, tuple) else (k,)): v
                         for k, v in self.frame.groupby(self.levels, sort=False).groups.items()}

    def _row(self, r: pd.Series) -> dict:
        return {"product_id": str(r[ID]), "title": str(r.get(TITLE, "")), "image": str(r.get(IMAGE, "") or ""),
                "image_root": self.root}

    def examples(self, path: list[str], k: int) -> list[dict]:
        """Up to k products filed under `path` (the first ones in catalog order: stable between views)."""
        ids = self._by_path.get(tuple(path), [])[:k]
        return [self._row(self.frame.loc[i]) for i in ids]

    def product(self, product_id: str) -> dict | None:
        return self._row(self.frame.loc[product_id]) if product_id in self.frame.index else None
