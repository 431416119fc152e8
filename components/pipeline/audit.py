"""Stage audit: artifacts/ingest/ + features -> artifacts/audit/ (audit.csv, audit.html, oof.npz, metrics.json).

Finds the catalog's existing mislabels. Every curated product is scored with class probabilities from
models that never saw it (K folds by product group, `training.crossfit`), three witnesses: the TF-IDF expert
over title + metadata, a linear expert over metadata alone, and a linear probe over a fixed description of
the photo (shape and colour, `images.shape_colour_descriptor`). Their probabilities are pooled as a weighted
product (a witness that is sure the label is wrong pulls the product down even when the others agree: a photo
swapped in from another class). One score ranks the products: the pooled probability of the current label
relative to its class's mean, at its least trusted level. Confident learning (cleanlab) estimates how many
labels are wrong; that many of the lowest-scored products are the suspects, so no product less trusted than a
suspect is left out.
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
from sklearn.linear_model import SGDClassifier

from components.atomic_io import atomic_dir, write_json
from components.catalog import FINEST, LABEL_SOURCE, TITLE, ids_array
from components.config import AuditParams, Params, TfidfParams, load_params
from components.data import EXCLUDE_FILE
from components.encoders import Encoders, encode_labels, load_encoders
from components.images import shape_colour_descriptor
from components.models.tfidf import TfidfBaseline
from components.training.crossfit import group_folds, out_of_fold

log = logging.getLogger(__name__)

# The witnesses: text = TF-IDF over title + metadata tokens; metadata = the same without the title (left out
# when a catalog has none); image = a probe on the photo alone (left out at audit.image_weight 0).
EXPERTS = ("text", "metadata", "image")
REASON_MIN = 0.25  # a witness is named in a product's reason when it gives another class at least this much
FLOOR = 1e-3  # a witness's probability is floored before pooling: one overconfident zero cannot veto alone


class AuditError(ValueError):
    """The products cannot be audited (no labels, too few groups...)."""


@dataclass
class AuditResult:
    table: pd.DataFrame  # one row per product, most suspicious first
    oof: dict[str, list[np.ndarray]]  # expert -> per level (N, classes) out-of-fold probabilities (NaN: abstains)
    folds: np.ndarray
    pooled: list[np.ndarray]  # per level (N, classes): the witnesses pooled, what label_quality reads


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


def image_oof(images: np.ndarray, has_image: np.ndarray, labels: np.ndarray, folds: np.ndarray,
              n_classes: list[int], p: AuditParams, seed: int) -> list[np.ndarray]:
    """Out-of-fold probabilities of a linear probe on the photos' shape-and-colour description.

    Products without a photo get NaN rows: the image witness abstains for them (see `pooled`). Each fold's
    probe trains on the fold's photographed products only, finest level, parents rolled up as for the text.
    """
    desc = np.concatenate([shape_colour_descriptor(np.asarray(images[i:i + 2048]))
                           for i in range(0, len(images), 2048)]) if len(images) else np.zeros((0, 1), np.float32)
    photographed = np.flatnonzero(has_image)
    mean, std = desc[photographed].mean(0), desc[photographed].std(0) + 1e-6
    desc = (desc - mean) / std

    def fit_predict(train: np.ndarray, held: np.ndarray) -> list[np.ndarray]:
        probe = SGDClassifier(loss="log_loss", alpha=p.image_alpha, max_iter=p.epochs, tol=None, random_state=seed)
        probe.fit(desc[train], labels[train, FINEST])
        article = np.zeros((len(held), n_classes[FINEST]), np.float32)
        article[:, probe.classes_] = probe.predict_proba(desc[held])
        parents = [(article @ m).astype(np.float32) for m in parent_given_article(labels[train], n_classes)]
        return [*parents, article]

    out = out_of_fold(folds, n_classes, fit_predict, rows=photographed)
    for level in out:
        level[~has_image] = np.nan
    return out


def pooled(oof: dict[str, list[np.ndarray]], weights: dict[str, float]) -> list[np.ndarray]:
    """Weighted product of the experts' probabilities, per level (rows sum to one).

    A product (geometric pooling) instead of a mixture: under a mixture a witness that gives the label ~0 only
    takes its weight off the score, so a photo from another class never makes a product suspect while title
    and metadata agree. A witness with a NaN row abstains there (no photo); the others' weights are renormalised.
    """
    levels = len(next(iter(oof.values())))
    out = []
    for lvl in range(levels):
        log_sum, total = 0.0, 0.0
        for e, per_level in oof.items():
            probs = per_level[lvl]
            w = np.where(np.isnan(probs[:, :1]), 0.0, weights[e])
            log_sum = log_sum + w * np.log(np.maximum(np.nan_to_num(probs, nan=1.0), FLOOR))
            total = total + w
        z = log_sum / total
        z = np.exp(z - z.max(1, keepdims=True))
        out.append((z / z.sum(1, keepdims=True)).astype(np.float32))
    return out


def witness_reason(levels: tuple[str, ...], names: list[np.ndarray], labels: np.ndarray,
                   oof: dict[str, list[np.ndarray]], row: int, at: list[int]) -> str:
    """Why a product is suspected, for the person who checks it: per suspect level, which witness names
    which other class (and how sure it is), or that none is sure of anything."""
    parts = []
    for lvl in at:
        says = []
        for e, per_level in oof.items():
            probs = per_level[lvl][row]
            if np.isnan(probs[0]):
                continue
            best = int(probs.argmax())
            if best != labels[row, lvl] and probs[best] >= REASON_MIN:
                says.append(f"{e} says {names[lvl][best]} ({probs[best]:.2f})")
        current = names[lvl][labels[row, lvl]]
        parts.append(f"{levels[lvl]} {current}: " + (", ".join(says) if says else "no witness is sure of it"))
    return "; ".join(parts)


def relative_to_class(q: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each product's label probability over its class's mean (confident learning's per-class threshold),
    capped at 1: a class the witnesses are never sure of (a couple of dozen basketballs filed as Sporting Goods)
    is not suspected wholesale, while a shirt at 0.001 in a class they know well is."""
    mean = np.bincount(y, weights=q, minlength=n_classes) / np.maximum(np.bincount(y, minlength=n_classes), 1)
    return np.minimum(q / np.maximum(mean[y], 1e-6), 1.0)


def rank_suspects(frame: pd.DataFrame, labels: np.ndarray, probs: list[np.ndarray],
                  oof: dict[str, list[np.ndarray]], enc: Encoders) -> pd.DataFrame:
    """One row per product, most suspicious first: current and suggested label per level, the pooled probability
    of the label per level (`quality_<level>`), label quality (the one ranking score: that probability relative
    to its class's mean, at the least trusted level), suspect flag, the levels and witnesses behind it.

    Cleanlab (per level, `prune_by_noise_rate`) says *how many* labels look wrong: the products it flags at any
    level. The score says *which*: that many of the lowest-scored products are the suspects. Cleanlab's own
    per-level flags disagree with any single ranking (in a run before this rule, 76 products outside its flags
    were less trusted than the median flagged one); counting with it and choosing by the score keeps its
    noise-rate estimate and makes the queue's order and its cut-off one and the same.
    """
    out = pd.DataFrame({"id": frame["id"].to_numpy(), "title": frame[TITLE].to_numpy()})
    names = [np.asarray(enc.labels[name], dtype=object) for name in enc.levels]
    quality, flagged = [], np.zeros(len(frame), bool)
    for lvl, name in enumerate(enc.levels):
        y, p = labels[:, lvl], probs[lvl]
        flagged |= find_label_issues(y, p, filter_by="prune_by_noise_rate")
        q = get_label_quality_scores(y, p, method="self_confidence")
        out[f"current_{name}"] = names[lvl][y]
        out[f"suggested_{name}"] = names[lvl][p.argmax(1)]
        out[f"quality_{name}"] = q.round(4)
        quality.append(relative_to_class(q, y, p.shape[1]).round(4))
    quality = np.stack(quality, axis=1)
    score = quality.min(axis=1)
    out["label_quality"] = score
    # A product a person already checked (corrected or confirmed in review: ingest's label_source) is never a
    # suspect again; its scores stay in the table.
    checked = (frame[LABEL_SOURCE].to_numpy() != "export") if LABEL_SOURCE in frame else np.zeros(len(frame), bool)
    candidates = np.flatnonzero(~checked)
    order = candidates[np.argsort(score[candidates], kind="stable")]
    n = int((flagged & ~checked).sum())
    suspect = np.zeros(len(frame), bool)
    suspect[order[:n]] = True
    if n:  # ties at the cut-off score join: a product as little trusted as a suspect is one too
        suspect |= ~checked & (score <= score[order[n - 1]])
    cutoff = score[suspect].max() if suspect.any() else -1.0
    out["suspect"] = suspect
    at_levels = [np.flatnonzero(quality[i] <= cutoff) if suspect[i] else np.array([], int) for i in range(len(frame))]
    out["suspect_levels"] = [",".join(enc.levels[j] for j in lv) for lv in at_levels]
    # Every product gets its why (a suspect: at each suspect level; any other: at its least trusted level, when
    # a witness disagrees there), so a listing that ranks high without being counted a mislabel (its photo
    # shows something else) says so too.
    weakest = quality.argmin(axis=1)
    reasons = []
    for i, lv in enumerate(at_levels):
        if len(lv):
            reasons.append(witness_reason(enc.levels, names, labels, oof, i, list(lv)))
        else:
            why = witness_reason(enc.levels, names, labels, oof, i, [int(weakest[i])])
            reasons.append("" if why.endswith("no witness is sure of it") else why)
    out["reason"] = reasons
    disagree = {e: oof[e][FINEST].argmax(1) != labels[:, FINEST] for e in oof}
    for e in oof:  # an abstaining witness (no photo) disagrees with nothing
        disagree[e] &= ~np.isnan(oof[e][FINEST][:, 0])
    out["disagreeing_experts"] = [",".join(e for e in oof if disagree[e][i]) for i in range(len(frame))]
    return out.sort_values(["suspect", "label_quality"], ascending=[False, True], kind="stable").reset_index(drop=True)


def audit_products(frame: pd.DataFrame, images: np.ndarray, enc: Encoders, p: AuditParams, tfidf: TfidfParams,
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
    experts = [e for e in EXPERTS[:2] if e == "text" or categorical or enc.attr_vocab]
    oof = {e: expert_oof(frame, labels, folds, n_classes, tfidf, categorical, e == "text", p) for e in experts}
    has_image = frame["has_image"].to_numpy(bool) if "has_image" in frame else np.ones(len(frame), bool)
    if p.image_weight > 0 and has_image.sum() >= p.folds:
        oof["image"] = image_oof(images, has_image, labels, folds, n_classes, p, seed)
    probs = pooled(oof, witness_weights(p))
    return AuditResult(rank_suspects(frame, labels, probs, oof, enc), oof, folds, probs)


def witness_weights(p: AuditParams) -> dict[str, float]:
    """Each witness's share in the pooled log-probability (params audit: text_weight splits what the image leaves)."""
    rest = 1.0 - p.image_weight
    return {"text": rest * p.text_weight, "metadata": rest * (1.0 - p.text_weight), "image": p.image_weight}


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
                    f"<td>{html.escape(r.reason)}</td></tr>")
    n = int(table["suspect"].sum())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Catalog audit</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}}img{{height:80px}}</style></head><body>
<h1>Catalog audit: {n} suspected mislabels of {len(table)} products</h1>
<p>Most suspicious first (label quality = the witnesses' pooled out-of-fold probability of the current label
relative to its class's mean, at its least trusted level). Showing {min(n, top)}; every product is in audit.csv.</p>
<table><thead><tr><th>image</th><th>id</th><th>title</th><th>current category</th><th>suggested</th>
<th>label quality</th><th>why</th></tr></thead><tbody>
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
    images = np.load(src / "images.npy", mmap_mode="r")
    result = audit_products(df, images, enc, params.audit, params.train_baseline.tfidf, tuple(enc.categorical),
                            params.seed)
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
        arrays |= {f"pooled_{lvl}": result.pooled[i] for i, lvl in enumerate(enc.levels)}
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
