"""Stage audit: artifacts/ingest/ + features -> artifacts/audit/ (audit.csv, audit.html, oof.npz, metrics.json).

Finds the catalog's existing mislabels. Every curated product is scored with class probabilities from
models that never saw it (K folds by product group, `training.crossfit`): the TF-IDF expert over title +
metadata and a linear expert over metadata alone. Confident learning (cleanlab) then ranks products by
how likely their current label is wrong, at each level.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from PIL import Image

from components.atomic_io import atomic_dir, write_json
from components.catalog import FINEST, LABEL_SOURCE, TITLE, ids_array
from components.config import AuditParams, Params, TfidfParams, load_params
from components.data import EXCLUDE_FILE
from components.encoders import Encoders, encode_labels, load_encoders
from components.models.tfidf import TfidfBaseline
from components.training.crossfit import group_folds, out_of_fold

log = logging.getLogger(__name__)

EXPERTS = ("text", "metadata")  # text = TF-IDF over title + metadata tokens; metadata = no title


class AuditError(ValueError):
    """The products cannot be audited (no labels, too few groups...)."""


@dataclass
class AuditResult:
    table: pd.DataFrame  # one row per product, most suspicious first
    oof: dict[str, list[np.ndarray]]  # expert -> per level (N, classes) out-of-fold probabilities
    folds: np.ndarray


def parent_given_article(labels: np.ndarray, n_classes: list[int]) -> list[np.ndarray]:
    """Per parent level, (finest classes, parents) P(parent | finest class) from these rows' label paths."""
    out = []
    for lvl in range(len(n_classes) - 1):
        m = np.zeros((n_classes[FINEST], n_classes[lvl]), dtype=np.float64)
        np.add.at(m, (labels[:, FINEST], labels[:, lvl]), 1.0)
        seen = m.sum(1, keepdims=True)
        out.append(np.divide(m, seen, out=np.full_like(m, 1.0 / n_classes[lvl]), where=seen > 0))
    return out


def expert_oof(frame: pd.DataFrame, labels: np.ndarray, folds: np.ndarray, n_classes: list[int],
               tfidf: TfidfParams, categorical: tuple[str, ...], use_title: bool, p: AuditParams
               ) -> list[np.ndarray]:
    """Out-of-fold probabilities at every level from one finest-level model per fold.

    The parent levels are rolled up through P(parent | finest class) of the fold's training paths: one
    classifier per fold instead of one per level, which keeps the stage within minutes on 2 cores.
    """
    def fit_predict(train: np.ndarray, held: np.ndarray) -> list[np.ndarray]:
        model = TfidfBaseline(tfidf, categorical, False, use_title=use_title, max_iter=p.epochs,
                              sgd_alpha=p.sgd_alpha)
        model.fit(frame.iloc[train], labels[train][:, [FINEST]])
        (article,) = model.predict_proba(frame.iloc[held], [n_classes[FINEST]])
        parents = [(article @ m).astype(np.float32) for m in parent_given_article(labels[train], n_classes)]
        return [*parents, article]

    return out_of_fold(folds, n_classes, fit_predict)


def pooled(oof: dict[str, list[np.ndarray]], weights: dict[str, float]) -> list[np.ndarray]:
    """Weighted mixture of the experts' probabilities, per level (rows sum to one)."""
    total = sum(weights.values())
    levels = len(next(iter(oof.values())))
    return [sum(weights[e] / total * oof[e][lvl] for e in oof) for lvl in range(levels)]


def rank_suspects(frame: pd.DataFrame, labels: np.ndarray, probs: list[np.ndarray],
                  oof: dict[str, list[np.ndarray]], enc: Encoders) -> pd.DataFrame:
    """One row per product: current and suggested label per level, label quality, suspect flags."""
    out = pd.DataFrame({"id": frame["id"].to_numpy(), "title": frame[TITLE].to_numpy()})
    quality, suspect_levels = [], []
    for lvl, name in enumerate(enc.levels):
        y, p = labels[:, lvl], probs[lvl]
        names = np.asarray(enc.labels[name], dtype=object)
        issues = find_label_issues(y, p, filter_by="prune_by_noise_rate")
        q = get_label_quality_scores(y, p, method="self_confidence")
        out[f"current_{name}"] = names[y]
        out[f"suggested_{name}"] = names[p.argmax(1)]
        out[f"quality_{name}"] = q.round(4)
        quality.append(q)
        suspect_levels.append(np.where(issues, name, ""))
    out["label_quality"] = np.min(quality, axis=0).round(4)
    # A product a person already checked (corrected or confirmed in review: ingest's label_source) is never a
    # suspect again; its scores stay in the table.
    checked = (frame[LABEL_SOURCE].to_numpy() != "export") if LABEL_SOURCE in frame else np.zeros(len(frame), bool)
    suspect_levels = [np.where(checked, "", s) for s in suspect_levels]
    out["suspect"] = np.any([s != "" for s in suspect_levels], axis=0)
    out["suspect_levels"] = [",".join(x for x in row if x) for row in zip(*suspect_levels)]
    disagree = {e: oof[e][FINEST].argmax(1) != labels[:, FINEST] for e in oof}
    out["disagreeing_experts"] = [",".join(e for e in oof if disagree[e][i]) for i in range(len(frame))]
    # Suspects first, then by how little the experts believe the current label.
    return out.sort_values(["suspect", "label_quality"], ascending=[False, True], kind="stable").reset_index(drop=True)


def audit_products(frame: pd.DataFrame, enc: Encoders, p: AuditParams, tfidf: TfidfParams,
                   categorical: tuple[str, ...], seed: int) -> AuditResult:
    """The audit of labelled products (pure: the stage and the injected-noise benchmark both call it)."""
    missing = [lvl for lvl in enc.levels if lvl not in frame or (frame[lvl].astype(str).str.strip() == "").all()]
    if missing:
        raise AuditError(f"the products carry no {', '.join(missing)} labels: the audit checks existing labels, "
                         "so give it a labelled catalog (the label columns of params.catalog)")
    labels = encode_labels(frame, enc)
    unknown = (labels < 0).any(axis=1)
    if unknown.any():
        raise AuditError(f"{int(unknown.sum())} products have categories the encoders do not know "
                         f"(e.g. id {frame['id'].to_numpy()[unknown][0]}); rerun `dvc repro features`")
    folds = group_folds(frame["group"].to_numpy(), p.folds, seed)
    n_classes = [len(v) for v in enc.labels.values()]
    # A catalog without metadata (no categorical column, no attribute token) has no metadata expert.
    experts = [e for e in EXPERTS if e == "text" or categorical or enc.attr_vocab]
    oof = {e: expert_oof(frame, labels, folds, n_classes, tfidf, categorical, e == "text", p) for e in experts}
    probs = pooled(oof, {"text": p.text_weight, "metadata": 1.0 - p.text_weight})
    return AuditResult(rank_suspects(frame, labels, probs, oof, enc), oof, folds)


def thumbnail(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def audit_html(table: pd.DataFrame, images: np.ndarray, row_of_id: dict, has_image: np.ndarray,
               top: int, levels: tuple[str, ...]) -> str:
    """The merchandiser page: the top suspects with thumbnail, title, current and suggested category."""
    rows = []
    for r in table[table["suspect"]].head(top).itertuples(index=False):
        i = row_of_id[r.id]
        img = f'<img src="{thumbnail(images[i])}" alt="product {r.id}">' if has_image[i] else "no image"
        cur = " › ".join(html.escape(str(getattr(r, f"current_{lvl}"))) for lvl in levels)
        sug = " › ".join(html.escape(str(getattr(r, f"suggested_{lvl}"))) for lvl in levels)
        rows.append(f"<tr><td>{img}</td><td>{html.escape(str(r.id))}</td><td>{html.escape(str(r.title))}</td><td>{cur}</td>"
                    f"<td><b>{sug}</b></td><td>{r.label_quality:.3f}</td>"
                    f"<td>{html.escape(r.suspect_levels)}</td></tr>")
    n = int(table["suspect"].sum())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Catalog audit</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}}img{{height:80px}}</style></head><body>
<h1>Catalog audit: {n} suspected mislabels of {len(table)} products</h1>
<p>Most suspicious first (label quality = the experts' out-of-fold probability of the current label,
lowest level). Showing {min(n, top)}; every product is in audit.csv.</p>
<table><thead><tr><th>image</th><th>id</th><th>title</th><th>current category</th><th>suggested</th>
<th>label quality</th><th>suspect at</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def summary(table: pd.DataFrame, levels: tuple[str, ...]) -> dict:
    sus = table[table["suspect"]]
    by_master = table.groupby(f"current_{levels[0]}")["suspect"].mean()  # the top level
    return {"products": len(table), "suspects": len(sus), "suspect_share": round(len(sus) / max(len(table), 1), 4),
            **{f"suspects_at_{lvl}": int(table["suspect_levels"].str.split(",").apply(lambda s, v=lvl: v in s).sum())
               for lvl in levels},
            "suspect_share_by_master": {k: round(float(v), 4) for k, v in by_master.items()}}


def exclusions(table: pd.DataFrame, frame: pd.DataFrame, on: bool) -> pd.DataFrame:
    """exclude.csv: the train split's suspects when audit.exclude_from_training is on, else no row (the file
    exists either way: the training stages depend on it, and an unchanged empty file reruns nothing)."""
    train = set(frame.loc[frame["split"] == "train", "id"])
    out = table.loc[table["suspect"] & table["id"].isin(train), ["id", "suspect_levels"]] if on \
        else pd.DataFrame({"id": pd.Series(dtype=frame["id"].dtype), "suspect_levels": pd.Series(dtype=str)})
    return out.rename(columns={"suspect_levels": "reason"}).sort_values("id").reset_index(drop=True)


def run(params: Params) -> dict:
    src = Path(params.paths.ingest)
    df = pd.read_parquet(src / "products.parquet")
    enc = load_encoders(params.paths.features)
    result = audit_products(df, enc, params.audit, params.train_baseline.tfidf, tuple(enc.categorical), params.seed)
    images = np.load(src / "images.npy", mmap_mode="r")
    row_of_id = {i: n for n, i in enumerate(df["id"])}
    metrics = summary(result.table, enc.levels)
    excluded = exclusions(result.table, df, params.audit.exclude_from_training)
    metrics["excluded_from_training"] = len(excluded)
    with atomic_dir(params.paths.audit) as tmp:  # the folder is swapped in whole: plain writes inside
        result.table.to_csv(tmp / "audit.csv", index=False)
        page = audit_html(result.table, images, row_of_id, df["has_image"].to_numpy(bool), params.audit.html_rows,
                          enc.levels)
        (tmp / "audit.html").write_text(page, encoding="utf-8")
        arrays = {f"{e}_{lvl}": result.oof[e][i] for e in result.oof for i, lvl in enumerate(enc.levels)}
        np.savez_compressed(tmp / "oof.npz", ids=ids_array(df["id"]), folds=result.folds, **arrays)
        write_json(tmp / "metrics.json", metrics)
        excluded.to_csv(tmp / EXCLUDE_FILE, index=False)
    log.info("audit: %d suspects of %d products", metrics["suspects"], metrics["products"])
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(load_params())
    except AuditError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
