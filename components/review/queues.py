"""What goes into the review queues, as items (store.Store.enqueue): the audit's suspects, a categorize run's
review queue, a list of ids an admin uploads. Pure functions over the pipeline's outputs, file reading at the
edges. Label paths are lists, coarsest level first, in the catalog schema's levels.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import read_json
from components.catalog import ID, IMAGE, TITLE
from components.config import Params

TOP = 3  # suggestions shown per item


def top_paths(level_probs: list[np.ndarray], labels: list[list[str]], taxonomy: list[list[str]],
              k: int = TOP) -> list[list[dict]]:
    """Each row's k most probable taxonomy paths: a path's score is the product of its levels' probabilities
    (only paths that exist in the catalog, so a suggestion is never an impossible combination)."""
    index = [{name: i for i, name in enumerate(names)} for names in labels]
    cols = np.array([[index[lvl][p[lvl]] for lvl in range(len(labels))] for p in taxonomy])  # (paths, levels)
    score = np.ones((level_probs[0].shape[0], len(taxonomy)))
    for lvl, probs in enumerate(level_probs):
        score *= probs[:, cols[:, lvl]]
    best = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return [[{"path": list(taxonomy[j]), "confidence": round(float(score[r, j]), 4)} for j in row]
            for r, row in enumerate(best)]


def product_info(row: pd.Series, params: Params, root: Path) -> dict:
    """What a reviewer sees of a product besides its label: title, image, the schema's metadata."""
    meta = {c: row[c] for c in (*params.catalog.categorical, *params.catalog.numeric) if c in row.index}
    return {"title": str(row.get(TITLE, "")), "image": str(row.get(IMAGE, "") or ""), "image_root": str(root),
            "metadata": {k: (None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.number)) else str(v)))
                         for k, v in meta.items()}}


def audit_items(params: Params, audit: pd.DataFrame, oof: dict[str, np.ndarray], encoders: dict,
                products: pd.DataFrame, source: str, root: Path) -> list[dict]:
    """The audit's suspects, least trusted label first, each with why it is suspected and the witnesses' three
    most probable paths."""
    levels = list(encoders["labels"])
    sus = audit[audit["suspect"].astype(str).str.lower() == "true"].sort_values("label_quality", kind="stable")
    if sus.empty:
        return []
    at = pd.Series(np.arange(len(oof["ids"])), index=pd.Index(oof["ids"].astype(str)))
    rows = at.reindex(sus["id"].astype(str)).to_numpy()
    # The audit's pooled probabilities (what its label quality reads) give the item's three suggested paths.
    probs = [oof[f"pooled_{lvl}"][rows] for lvl in levels]
    suggestions = top_paths(probs, [encoders["labels"][lvl] for lvl in levels], encoders["taxonomy"])
    info = products.set_index(products[ID].astype(str))
    items = []
    for (_, r), sugg in zip(sus.iterrows(), suggestions, strict=True):
        pid = str(r["id"])
        why = str(r.get("reason", "") or "")
        items.append({"queue": "audit", "source": source, "product_id": pid, "rank": float(r["label_quality"]),
                      "current_path": [str(r[f"current_{lvl}"]) for lvl in levels], "suggestions": sugg,
                      "reason": why or "suspected mislabel",
                      "product": product_info(info.loc[pid], params, root) if pid in info.index else {}})
    return items


def read_audit(params: Params, home: Path = Path(".")) -> list[dict]:
    """Items from the last audit run (artifacts/audit with the ingest and features outputs it read)."""
    folder = home / params.paths.audit
    table = folder / "audit.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no audit yet; run `dvc repro audit`")
    audit = pd.read_csv(table, dtype={"id": str}, keep_default_na=False)
    audit["label_quality"] = audit["label_quality"].astype(float)
    with np.load(folder / "oof.npz", allow_pickle=False) as z:
        oof = {k: z[k] for k in z.files}
    encoders = read_json(home / params.paths.features / "encoders.json")
    products = pd.read_parquet(home / params.paths.ingest / "products.parquet")
    source = "audit:" + hashlib.md5(table.read_bytes()).hexdigest()[:10]  # one audit run = one source
    return audit_items(params, audit, oof, encoders, products, source, (home / params.paths.raw).resolve())


def categorize_items(review: pd.DataFrame, levels: list[str], batch: str, root: Path,
                     frame: pd.DataFrame | None = None) -> list[dict]:
    """A categorize run's review_queue.csv: least confident first; the predicted path is the suggestion."""
    finest = levels[-1]
    info = None if frame is None else frame.set_index(frame[ID].astype(str))
    items = []
    for _, r in review.iterrows():
        pid = str(r["id"])
        conf = pd.to_numeric(pd.Series([r.get(f"{finest}_confidence")]), errors="coerce").fillna(0.0).iloc[0]
        path = [str(r.get(lvl, "") or "") for lvl in levels]
        current: list[str] = []  # an unlabelled batch: nothing to confirm, only a path to accept or pick
        product = {"title": "", "image": "", "image_root": str(root), "metadata": {}}
        if info is not None and pid in info.index:
            row = info.loc[pid]
            product.update({"title": str(row.get(TITLE, "")), "image": str(row.get(IMAGE, "") or "")})
            labelled = [str(row.get(lvl, "") or "") for lvl in levels]
            current = labelled if all(labelled) else []
        items.append({"queue": "categorize", "source": batch, "product_id": pid, "rank": float(conf),
                      "current_path": current,
                      "suggestions": [{"path": path, "confidence": round(float(conf), 4)}] if all(path) else [],
                      "reason": f"{r['review_reason']} (status {r.get('status', '')})", "product": product})
    return items


def upload_items(ids: list[str], products: pd.DataFrame, levels: list[str], source: str, root: Path,
                 params: Params) -> tuple[list[dict], list[str]]:
    """An admin's list of product ids (in the given order); returns the items and the ids not in the catalog."""
    info = products.set_index(products[ID].astype(str))
    items, unknown = [], []
    for n, pid in enumerate(dict.fromkeys(i.strip() for i in ids if i.strip())):
        if pid not in info.index:
            unknown.append(pid)
            continue
        row = info.loc[pid]
        items.append({"queue": "upload", "source": source, "product_id": pid, "rank": float(n),
                      "current_path": [str(row[lvl]) for lvl in levels], "suggestions": [],
                      "reason": f"listed in {source}", "product": product_info(row, params, root)})
    return items, unknown
