"""Stage ingest: data/ (styles.csv, products.csv, images/) -> artifacts/ingest/.

Reviewers' corrections (params paths.corrections, written by `deepfusion review export`) are applied on top of the
export's labels, each product's `label_source` saying where its label came from.

Writes products.parquet (curated rows, labels, label_source, group, split), images.npy (uint8 (N, H, W, 3) cache,
row-aligned), quarantine.csv (every rejected row or image with its reason), report.json and metrics.json.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.catalog import ID, LABEL_SOURCE, PATH_SEP, TITLE, CatalogRead, read_catalog, read_corrections
from components.config import CatalogSchema, IngestParams, Params, load_params
from components.images import ImageError, ImagePathError, content_md5, decode_image, dhash, read_image_file

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["file", "row", "id", "field", "reason"]


def normalize_title(title: str) -> str:
    """Lower-case, punctuation-free title: the key under which repeated listings are one product."""
    return re.sub(r"[^a-z0-9]+", " ", title.lower()).strip()


def stable_bucket(key: str) -> float:
    """Deterministic number in [0, 1) from a string (independent of PYTHONHASHSEED and catalog size)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group_key: str, train: float, val: float) -> str:
    u = stable_bucket(group_key)
    return "train" if u < train else ("val" if u < train + val else "test")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_products(titles: list[str], md5s: list[str], phashes: list[int | None],
                   perceptual_max_group: int) -> list[str]:
    """Group rows that are the same product: identical image bytes, identical dHash or same title.

    Returns a group key per row: the smallest member key, so it is stable as unrelated rows are added.
    """
    n = len(titles)
    uf = _UnionFind(n)
    for keys, limit in ((md5s, None), (phashes, perceptual_max_group), (titles, None)):
        members: dict = {}
        for i, k in enumerate(keys):
            if k in (None, ""):
                continue
            members.setdefault(k, []).append(i)
        for idx in members.values():
            # A perceptual hash shared by many rows is a generic silhouette, not one product.
            if limit is not None and len(idx) > limit:
                continue
            for j in idx[1:]:
                uf.union(idx[0], j)
    own_key = [f"t:{t}" if t else (f"m:{m}" if m else f"r:{i}") for i, (t, m) in
               enumerate(zip(titles, md5s))]
    best: dict[int, str] = {}
    for i in range(n):
        r = uf.find(i)
        best[r] = min(best.get(r, own_key[i]), own_key[i])
    return [best[uf.find(i)] for i in range(n)]


def collapse_rare(labels: pd.Series, min_count: int, rare_label: str) -> pd.Series:
    counts = labels.value_counts()
    rare = counts[counts < min_count].index
    return labels.where(~labels.isin(rare), rare_label)


def _load_one(args: tuple[int, Path, str, int, int]) -> tuple[int, np.ndarray | None, str, int | None, str]:
    idx, root, rel, height, width = args
    try:
        data = read_image_file(root, rel) if rel else None
    except ImagePathError as exc:  # `../x`, an absolute path or a symlink out of the catalog: never read
        return idx, None, "", None, f"rejected_image: {exc}"
    except ImageError as exc:
        return idx, None, "", None, f"corrupt_image: {exc}"
    except OSError as exc:  # permission denied, a directory, an I/O error: this row only
        return idx, None, "", None, f"unreadable_image: {type(exc).__name__}: {exc.strerror or exc}"
    if data is None:
        return idx, None, "", None, "no_image"
    try:
        pixels = decode_image(data, height, width)
    except ImageError as exc:
        return idx, None, content_md5(data), None, f"corrupt_image: {exc}"
    return idx, pixels, content_md5(data), dhash(pixels), "ok"


def load_images(root: Path, paths: list[str], out: np.ndarray, height: int, width: int, workers: int
                ) -> tuple[list[str], list[int | None], list[str]]:
    """Decode every image (paths relative to the catalog folder `root`, read only inside it) into `out`
    (a memmap); returns md5s, dHashes and a status per row."""
    md5s, phashes, status = [""] * len(paths), [None] * len(paths), [""] * len(paths)
    jobs = [(i, Path(root), str(p or ""), height, width) for i, p in enumerate(paths)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_load_one, jobs, chunksize=256)
            for idx, pixels, md5, ph, st in results:
                if pixels is not None:
                    out[idx] = pixels
                md5s[idx], phashes[idx], status[idx] = md5, ph, st
    else:
        for job in jobs:
            idx, pixels, md5, ph, st = _load_one(job)
            if pixels is not None:
                out[idx] = pixels
            md5s[idx], phashes[idx], status[idx] = md5, ph, st
    return md5s, phashes, status


def curate(read: CatalogRead, params: IngestParams, schema: CatalogSchema) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the row policy: which rows are curated and which are quarantined (with reasons)."""
    df = read.frame
    if params.limit > 0:
        df = df.iloc[: params.limit]
    quarantine = [p for p in read.problems if not p.get("kept")]  # kept: a note on a row that was read
    keep = pd.Series(True, index=df.index)
    main, top = schema.files[0], schema.levels[0]
    for level in schema.levels:
        bad = keep & (df[level] == "")
        for _, r in df[bad].iterrows():
            quarantine.append({"file": main, "row": r.source_row, "id": r.id, "field": level,
                               "reason": "missing_label"})
        keep &= ~bad
    excluded = keep & df[top].isin(params.exclude_master)
    unknown = keep & ~df[top].isin(schema.known_top) & ~excluded if schema.known_top else keep & ~keep
    for mask, reason in ((excluded, "excluded_master_category (params.ingest.exclude_master)"),
                         (unknown, f"unknown_{top} (not one of " + ", ".join(schema.known_top) + ")")):
        for _, r in df[mask].iterrows():
            quarantine.append({"file": main, "row": r.source_row, "id": r.id,
                               "field": top, "reason": f"{reason}: {r[top]!r}"})
    keep &= ~excluded & ~unknown
    return df[keep].reset_index(drop=True).copy(), quarantine


def apply_corrections(df: pd.DataFrame, table: pd.DataFrame, levels: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """Reviewers' decisions on top of the export's labels, product by product, all of a product's levels or none:
    a correction applies only while the export still says what the reviewer saw (`old`, the label as ingest
    gave it, or the export's own value of a level folded into the rare class); otherwise the export changed
    meanwhile and the correction is reported, not applied. A confirmation (level "") marks the product as
    checked by a person. Products no longer in the catalog are reported."""
    out = df.copy()
    out[LABEL_SOURCE] = "export"
    report = {"rows": len(table), "corrected_products": 0, "corrected_levels": 0, "confirmed_products": 0,
              "vanished": [], "export_changed": []}
    if table.empty:
        return out, report
    finest = levels[-1]
    at = pd.Series(out.index, index=out[ID].astype(str))
    for pid, rows in table.groupby("id", sort=True):
        if pid not in at.index:
            report["vanished"].append(pid)
            continue
        i = at[pid]
        stale = []
        for r in rows.itertuples(index=False):
            if r.level == "":
                now = PATH_SEP.join(str(out.at[i, lvl]) for lvl in levels)
                if now != r.old:
                    stale.append({"id": pid, "level": "", "old": r.old, "export": now, "new": r.new})
                continue
            now = str(out.at[i, r.level])
            seen = {now, str(out.at[i, f"{finest}_raw"])} if r.level == finest else {now}
            if r.old not in seen:
                stale.append({"id": pid, "level": r.level, "old": r.old, "export": now, "new": r.new})
        if stale:
            report["export_changed"] += stale
            continue
        changes = rows[rows["level"] != ""]
        for r in changes.itertuples(index=False):
            out.at[i, r.level] = r.new
            if r.level == finest:
                out.at[i, f"{finest}_raw"] = r.new
        out.at[i, LABEL_SOURCE] = "review" if len(changes) else "confirmed"
        report["corrected_products" if len(changes) else "confirmed_products"] += 1
        report["corrected_levels"] += len(changes)
    if report["vanished"] or report["export_changed"]:
        log.warning("corrections: %d for products no longer in the catalog, %d whose export label changed since "
                    "the review (not applied; listed in report.json)", len(report["vanished"]),
                    len(report["export_changed"]))
    return out, report


def run(params: Params) -> dict:
    p = params.ingest
    started = time.perf_counter()
    schema = params.catalog
    read = read_catalog(params.paths.raw, schema, require_labels=True)
    rows_in = len(read.frame) + sum(1 for q in read.problems if q["file"] == schema.files[0] and not q.get("kept"))
    df, quarantine = curate(read, p, schema)
    raw = Path(params.paths.raw)

    out_dir = Path(params.paths.ingest)
    with atomic_dir(out_dir) as tmp:
        cache = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(df), p.image_height, p.image_width, 3))
        md5s, phashes, status = load_images(raw, list(df["image"]), cache,
                                            p.image_height, p.image_width, p.workers)
        cache.flush()
        del cache
        df["image_md5"] = md5s
        df["image_status"] = [s.split(":")[0] for s in status]
        df["has_image"] = df["image_status"] == "ok"
        for (_, r), st in zip(df.iterrows(), status):
            if st.startswith(("corrupt_image", "rejected_image", "unreadable_image")):
                # The product stays (text and metadata are usable); its image is quarantined.
                quarantine.append({"file": r.image, "row": r.source_row, "id": r.id, "field": "image",
                                   "reason": st})
        usable_md5 = [m if ok else "" for m, ok in zip(md5s, df["has_image"])]
        df["title_norm"] = [normalize_title(t) for t in df[TITLE]]
        df["group"] = group_products(df["title_norm"].tolist(), usable_md5, phashes, p.perceptual_max_group)
        df["split"] = [assign_split(g, p.splits.train, p.splits.val) for g in df["group"]]
        df[f"{schema.finest}_raw"] = df[schema.finest]
        for level in schema.levels:
            df[level] = collapse_rare(df[level], p.min_class_count, p.rare_label)
        df, corrections = apply_corrections(df, read_corrections(params.paths.corrections, schema), schema.levels)
        df.to_parquet(tmp / "products.parquet", index=False)
        qdf = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
        qdf.to_csv(tmp / "quarantine.csv", index=False)

        report = build_report(df, qdf, rows_in, schema.levels)
        report["corrections"] = corrections
        write_json(tmp / "report.json", report)
        write_json(tmp / "metrics.json", report["summary"])
    # Wall time varies run to run: it is logged, never written into a DVC output (identical reruns).
    elapsed = time.perf_counter() - started
    log.info("ingest: %d curated, %d quarantine entries, %.1f s (%.0f products/s)", len(df), len(qdf),
             elapsed, rows_in / max(elapsed, 1e-9))
    return report


def build_report(df: pd.DataFrame, quarantine: pd.DataFrame, rows_in: int, levels: tuple[str, ...]) -> dict:
    reasons = Counter(r.split(":")[0].split(" (")[0] for r in quarantine["reason"])
    quarantined_rows = quarantine[quarantine["field"] != "image"]["id"].nunique()
    summary = {
        "rows_in": rows_in,
        "curated": len(df),
        "quarantined_rows": int(quarantined_rows),
        "no_image": int((df["image_status"] == "no_image").sum()),
        "corrupt_image": int((df["image_status"] == "corrupt_image").sum()),
        "groups": int(df["group"].nunique()),
        **{f"split_{s}": int((df["split"] == s).sum()) for s in ("train", "val", "test")},
        **{f"classes_{lvl}": int(df[lvl].nunique()) for lvl in levels},
    }
    return {
        "summary": summary,
        "quarantine_reasons": dict(reasons),
        "per_split_per_class": {
            lvl: df.groupby([lvl, "split"]).size().unstack(fill_value=0).to_dict(orient="index")
            for lvl in levels
        },
        # The finest level's names that became rare_label ("rare_articleTypes" for the Myntra catalog).
        f"rare_{levels[-1]}s": sorted(df.loc[df[levels[-1]] != df[f"{levels[-1]}_raw"], f"{levels[-1]}_raw"]
                                      .unique().tolist()),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()
