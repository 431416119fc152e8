"""Drift of a new catalog batch against the model's training data; the only module that touches Evidently.

    python -m components.drift BATCH_DIR [--output DIR] [--model PATH|models:/NAME@ALIAS]

Reference: a seeded sample of the train split of the current data version (artifacts/ingest), described by
the model being monitored. Each signal (drift_signals) alarms only beyond what batches of the same size
drawn from held-out products of that data version show (`drift.false_alarm_rate` per batch); that null
distribution is cached per model and data version under `paths.drift_cache`. Writes summary.json (decision,
every signal with value, threshold and a sentence) and report.html (that list, then Evidently's
distributions). Exit 0 whether or not drift is found; 2 if the batch is unreadable.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, atomic_write_bytes, read_json, write_json
from components.catalog import TITLE, CatalogError, read_catalog
from components.checkpoint import CheckpointError, fusion_checkpoint
from components.config import DriftParams, Params, load_params
from components.data import cached_images
from components.encoders import tokenize
from components.images import ImageBatch
from components.lifecycle.provenance import data_md5, files_md5
from components.metrics import classification
from components.models.quantize import tensor_bytes
from components.models.runtime import inference_precision
from components.monitoring import drift_signals as sig
from components.monitoring import workspace
from components.serving.categorizer import Categorizer, load_images
from components.serving.predict import load_categorizer

log = logging.getLogger(__name__)

CHUNK = 1024  # products decoded and scored at once: bounds memory whatever the batch size
CACHE_VERSION = 1  # bump when the described columns or the signals change: old caches are then ignored
# The null file's own version: 2 keeps one record per null batch (version 1 kept one list per signal, ragged
# when a batch could not measure a signal, and misaligned batches). Its name carries it, so old files are
# left unread and rebuilt without throwing away the (expensive) described reference and pool.
NULL_VERSION = 2


def signals_for(params: Params, cat: Categorizer) -> sig.Signals:
    """What batches are watched on: the params' metadata columns and the model's levels."""
    return sig.Signals(params.drift.categorical, params.drift.numeric, cat.levels)


def describe(frame: pd.DataFrame, images: ImageBatch, cat: Categorizer, signals: sig.Signals
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per product: monitored columns and image/text embeddings (img_*, txt_*); and the predictions."""
    pred, emb = cat.predict(frame, images, embeddings=True)
    top, finest = signals.levels[0], signals.levels[-1]
    vocab = cat.encoders.vocab
    tokens = [tokenize(t) for t in frame[TITLE].fillna("")]
    has = np.array([s == "ok" for s in images.status])
    px = images.pixels
    out = pd.DataFrame({
        # read_catalog gives every column the schema names (params check that watched ones are among them)
        **{c: frame[c].fillna("").astype(str).to_numpy() for c in signals.metadata},
        **{c: pd.to_numeric(frame[c], errors="coerce").to_numpy(float) for c in signals.numeric_metadata},
        "title_length": [len(t) for t in tokens],
        "title_oov_share": [np.mean([w not in vocab for w in t]) if t else 1.0 for t in tokens],
        **{f"pred_{lvl}": pred[lvl].to_numpy() for lvl in dict.fromkeys((top, finest))},
        "pred_confidence": pred[f"{finest}_confidence"].to_numpy(float),
        # Scalar photo statistics: Evidently does not read pixels. NaN when there is no image.
        "image_brightness": np.where(has, px.mean(axis=(1, 2, 3), dtype=np.float32) / 255.0, np.nan),
        "image_white_share": np.where(has, (px.min(axis=3) > 240).mean(axis=(1, 2)), np.nan),
        signals.label: frame[finest].fillna("").astype(str).to_numpy() if finest in frame else "",
    })
    # Rows without an image get a zero image embedding: a growing share of imageless products is itself
    # a change worth seeing, and it moves the embedding distribution accordingly.
    img = np.nan_to_num(emb["image"], nan=0.0).astype(np.float32)
    txt = emb["text"].astype(np.float32)
    vectors = pd.DataFrame(np.concatenate([img, txt], axis=1),
                           columns=[*(f"img_{i}" for i in range(img.shape[1])),
                                    *(f"txt_{i}" for i in range(txt.shape[1]))])
    return pd.concat([out, vectors], axis=1), pred


def describe_chunks(frame: pd.DataFrame, images_of, cat: Categorizer, signals: sig.Signals
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`describe` CHUNK rows at a time; images_of(start, stop) gives those rows' images. Only one chunk's
    pixels are in memory at once."""
    parts, preds = [], []
    for start in range(0, len(frame), CHUNK):
        chunk = frame.iloc[start : start + CHUNK].reset_index(drop=True)
        d, p = describe(chunk, images_of(start, start + len(chunk)), cat, signals)
        parts.append(d)
        preds.append(p)
    return pd.concat(parts, ignore_index=True), pd.concat(preds, ignore_index=True)


def describe_split(ingest: str, split: str, sample: int | None, seed: int, cat: Categorizer, signals: sig.Signals
                   ) -> pd.DataFrame:
    """Products of one split of the curated catalog (a seeded sample), described from ingest's image cache."""
    df = pd.read_parquet(Path(ingest) / "products.parquet")
    idx = np.flatnonzero((df["split"] == split).to_numpy())
    if sample is not None and sample < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=sample, replace=False))
    frame = df.iloc[idx].reset_index(drop=True)
    has = frame["has_image"].to_numpy()
    # Labels as a batch carries them: the export's finest class, before rare classes were merged into one.
    finest = signals.levels[-1]
    frame[finest] = frame[f"{finest}_raw"]
    described, _ = describe_chunks(frame, lambda a, b: cached_images(ingest, idx[a:b], has[a:b]), cat, signals)
    return described


def model_fingerprint(cat: Categorizer) -> str:
    """Identity of the monitored model: its network weights and, for a stack, the combiner (which records
    every expert's md5). Same weights from a file or from the registry give the same fingerprint; int8 image
    towers (a stack on CPU) count as their integer weights and scales."""
    h = hashlib.sha256()
    for name, t in sorted(cat.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_bytes(t))
    combiner = getattr(cat, "combiner", None)
    if combiner is not None:
        h.update(json.dumps(combiner.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


class Baseline:
    """The reference (train sample) and the null pool (held-out split) described by one model, cached on disk
    with the null distributions per batch size; a new model or data version gets a new cache folder."""

    def __init__(self, params: Params, cat: Categorizer) -> None:
        p, products = params.drift, Path(params.paths.ingest) / "products.parquet"
        self.params = p
        self.seed = params.seed
        self.signals = signals = signals_for(params, cat)
        key = {"version": CACHE_VERSION, "model": model_fingerprint(cat), "data": files_md5(products),
               "reference_sample": p.reference_sample, "null_split": p.null_split, "pca": p.pca_components,
               "seed": params.seed,
               # bf16 and fp32 inference describe the same products differently: a null measured in one
               # precision must not judge batches described in the other.
               "precision": inference_precision(cat.device),
               "signals": [signals.categorical, signals.numeric]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(params.paths.drift_cache) / digest
        ref_file, pool_file = self.folder / "reference.parquet", self.folder / "pool.parquet"
        self.cached = ref_file.is_file() and pool_file.is_file()
        if self.cached:
            ref, pool = pd.read_parquet(ref_file), pd.read_parquet(pool_file)
        else:
            ref = describe_split(params.paths.ingest, "train", p.reference_sample, params.seed, cat, signals)
            pool = describe_split(params.paths.ingest, p.null_split, None, params.seed, cat, signals)
            _write_parquet(ref_file, ref)
            _write_parquet(pool_file, pool)
            write_json(self.folder / "key.json", key)
        self.reference = sig.prepare(ref, cat.encoders.labels[cat.levels[-1]], p.pca_components, params.seed,
                                     signals)
        self.pool = pool

    def calibration(self, size: int) -> sig.Calibration:
        """Null calibration for batches of `size` rows, computed once per size and cached."""
        path = self.folder / f"null_v{NULL_VERSION}_{size}_{self.params.null_batches}.json"
        if path.is_file():
            null = read_json(path)["batches_values"]
        else:
            t0 = time.perf_counter()
            null = sig.null_values(self.reference, self.pool, size, self.params.null_batches, self.seed)
            write_json(path, {"version": NULL_VERSION, "size": size, "batches": self.params.null_batches,
                              "batches_values": null,
                              "seconds": round(time.perf_counter() - t0, 1)})
        return sig.calibrate(null, self.params.false_alarm_rate, size)


def null_size(rows: int, p: DriftParams) -> int:
    """The calibrated batch size used for a batch of `rows`: the largest grid size not above it (a smaller
    size has a wider null, so rounding down errs towards fewer alarms); a tiny batch is calibrated at its size."""
    return max((s for s in p.null_sizes if s <= rows), default=rows)


def assess(base: Baseline, cur: pd.DataFrame) -> dict:
    """Signals of a described batch against the baseline, decided against the null of its size."""
    values, skipped = sig.measure(base.reference, cur, base.seed)
    calib = base.calibration(null_size(len(cur), base.params))
    return sig.decide(base.reference, cur, values, skipped, calib)


def quality(frame: pd.DataFrame, pred: pd.DataFrame, cat: Categorizer) -> dict:
    """Accuracy and macro-F1 per level of the scored rows when the batch carries labels; unseen classes
    counted apart."""
    out = {}
    for lvl in cat.levels:
        y = frame[lvl].fillna("").astype(str).to_numpy() if lvl in frame else np.array([""] * len(frame))
        labelled = y != ""
        if not labelled.any():
            continue
        known = np.isin(y, cat.encoders.labels[lvl]) & labelled
        got = pred[lvl].to_numpy()
        out[lvl] = {"labelled": int(labelled.sum()), "unseen_label_share": float(1 - known.sum() / labelled.sum()),
                    **classification(y[labelled], got[labelled]),
                    # comparable with the model's validation accuracy (its labels are all known to it)
                    "known_label_accuracy": float((y[known] == got[known]).mean()) if known.any() else None}
    return out


# Our section's own look, scoped to it (Evidently's page styles everything else).
DECISION_CSS = """
#deepfusion-decision{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:960px;color:#222}
#deepfusion-decision h1{font-size:1.6em;margin:.2em 0}
#deepfusion-decision .verdict{padding:.1em .5em;border-radius:.3em;color:#fff;background:#2e7d32}
#deepfusion-decision .verdict.drift{background:#c62828}
#deepfusion-decision table{border-collapse:collapse;width:100%;margin:1em 0;font-size:.95em}
#deepfusion-decision th,#deepfusion-decision td{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left}
#deepfusion-decision td.num{text-align:right;font-variant-numeric:tabular-nums}
#deepfusion-decision tr.drifted td{background:#fdecea;font-weight:600}
#deepfusion-decision tbody tr:nth-child(even):not(.drifted) td{background:#f7f7f7}
#deepfusion-decision .note{color:#555}
"""


def report_html(summary: dict, evidently_html: str) -> str:
    """Our decision first (drifted signals in sentences, every signal against its threshold), then Evidently's
    per-column statistics, which carry no verdict of their own: the page gives one answer."""
    drift = summary["drift_detected"]
    rows = "".join(f"<tr class='{'drifted' if s['drifted'] else 'normal'}'><td>{html.escape(s['signal'])}</td>"
                   f"<td class='num'>{s['value']:.4g}</td><td class='num'>{s['threshold']:.4g}</td>"
                   f"<td class='num'>{s.get('null_batches', '')}</td>"
                   f"<td>{'drifted' if s['drifted'] else 'normal'}</td></tr>" for s in summary["signals"])
    skipped = "".join(f"<li>{html.escape(k)}: not measurable ({html.escape(v)})</li>"
                      for k, v in summary["not_measurable"].items())
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"]) or "<li>nothing beyond normal</li>"
    c = summary["calibration"]
    head = (f"<style>{DECISION_CSS}</style><section id='deepfusion-decision'>"
            f"<h1>{html.escape(summary['batch'])}: <span class='verdict{' drift' if drift else ''}'>"
            f"{'DRIFT' if drift else 'no drift'}</span></h1>"
            f"<p>{summary['products']} products scored against {summary['reference_products']} training products. "
            f"Thresholds: what {c['null_batches']} batches of {c['null_batch_size']} held-out products reach, at a "
            f"false-alarm rate of {c['false_alarm_rate']:.0%} per batch.</p>"
            + (f"<p><b>Note:</b> {html.escape(summary['reference']['warning'])}</p>"
               if summary.get("reference", {}).get("warning") else "")
            + f"<ul>{reasons}</ul>"
            f"<table><thead><tr><th>signal</th><th>value</th><th>alarm above</th>"
            f"<th>null batches measured</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<ul>{skipped}</ul><p class='note'>Below: each monitored column's statistics and distribution, "
            f"training reference beside this batch (Evidently). They show what moved; the decision is the table "
            f"above.</p></section>")
    at = evidently_html.find("<body")
    at = evidently_html.find(">", at) + 1 if at >= 0 else 0
    return evidently_html[:at] + head + evidently_html[at:]


def check_output(batch_dir: Path, output: Path) -> None:
    """The report folder is replaced whole: refuse one that holds something other than an earlier report
    (`--output .` would wipe the working folder) or that is, or holds, the batch itself."""
    out, batch = Path(output).resolve(), Path(batch_dir).resolve()
    if out == batch or batch.is_relative_to(out):
        raise CatalogError(f"{output}: would replace the batch {batch_dir} itself; write the report elsewhere")
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise CatalogError(f"{output}: exists and is not a drift report folder (no summary.json); it would be "
                           "replaced whole, so pass a new or empty folder")
    if out.exists() and not out.is_dir():
        raise CatalogError(f"{output}: is a file; pass a folder for the report")


def reference_version(params: Params, model: str) -> dict:
    """The data version the reference is drawn from (data.dvc) and, for a registered model, the one it was
    trained on (its data_md5 tag). When they differ the reference is not the model's own training data: said in
    the summary (checking out that version's catalog is left to the operator: `git checkout` + `dvc pull`)."""
    current = data_md5()
    trained = ""
    if model.startswith("models:/"):
        from components import mlflow_store

        trained = mlflow_store.registered_tags(params, model).get("data_md5", "")
    out = {"data_md5": current, "model_data_md5": trained or None, "matches_model": None}
    if trained and current:
        out["matches_model"] = trained == current
        if trained != current:
            out["warning"] = (f"the model was trained on data version {trained[:12]}, the reference is drawn from "
                              f"{current[:12]} (the current data.dvc): differences may be the catalog's own change")
    return out


def run(params: Params, batch_dir: Path, output: Path, model: str, cat: Categorizer | None = None) -> dict:
    """The drift report of one batch against `model`'s reference; `cat`: that model already loaded (a task that
    reports several batches loads it once)."""
    t0 = time.perf_counter()
    check_output(batch_dir, output)
    read = read_catalog(batch_dir, params.catalog, require_labels=False)
    if read.frame.empty:
        raise CatalogError(f"{batch_dir}: no readable products ({len(read.problems)} rejected rows); nothing to "
                           f"compare, fix {read.main_file} and land the batch again")
    frame = read.frame
    cat = cat or load_categorizer(model)
    scored = frame
    if len(frame) > params.drift.max_batch_rows:  # effect sizes need no more rows: bounded time and memory
        keep = np.random.default_rng(params.seed).choice(len(frame), params.drift.max_batch_rows, replace=False)
        scored = frame.iloc[np.sort(keep)].reset_index(drop=True)
    h, w = cat.image_size
    base = Baseline(params, cat)
    cur, pred = describe_chunks(scored, lambda a, b: load_images(list(scored["image"].iloc[a:b]), h, w,
                                                                 root=batch_dir), cat, base.signals)
    summary = {"batch": str(batch_dir), **assess(base, cur)}
    rejected = sum(1 for p in read.problems if not p.get("kept"))  # kept: a note on a row that was read
    summary.update({"products": len(frame), "scored_products": len(cur), "rejected_rows": rejected,
                    "reference_products": len(base.reference.frame), "quality": quality(scored, pred, cat),
                    "model": model, "reference": reference_version(params, model), "null_cache": str(base.folder),
                    "null_cache_reused": base.cached,
                    # what the model filed the batch under (the dashboard's category-mix panel)
                    "predicted_mix": {cat.levels[0]: {str(k): round(float(v), 6) for k, v in
                                                      pred[cat.levels[0]].value_counts(normalize=True).items()}}})
    snap = workspace.evidently_report(base.reference.frame, cur, summary["not_measurable"], base.signals)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    page = report_html(summary, snap.get_html_str(as_iframe=False))
    with atomic_dir(output) as tmp:
        (tmp / "report.html").write_text(page, encoding="utf-8")
        write_json(tmp / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="deepfusion drift", description=__doc__.split("\n")[0])
    ap.add_argument("batch_dir", type=Path, help="a new catalog batch in the export layout")
    ap.add_argument("--output", type=Path,
                    help="report folder, replaced whole (default: params paths.drift/<batch name>)")
    ap.add_argument("--model", help="checkpoint path or models:/NAME@ALIAS (default: the pipeline's fusion model)")
    args = ap.parse_args(argv)
    params = load_params()
    output = args.output or Path(params.paths.drift) / args.batch_dir.name
    try:
        s = run(params, args.batch_dir, output, args.model or str(fusion_checkpoint(params.paths.train_fusion)))
    except (CatalogError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdict = "DRIFT" if s["drift_detected"] else "no drift"
    print(f"{args.batch_dir}: {verdict} ({s['products']} products, {s['seconds']} s) -> {output}")
    for r in s["reasons"]:
        print(f"  - {r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
