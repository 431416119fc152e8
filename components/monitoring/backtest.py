"""Backtest of the drift monitor on the catalog's own history: would it have fired when accuracy dropped?

    deepfusion backtest [--output artifacts/backtest]     (or python -m components.monitoring.backtest)

1. An as-of model: ingest, validate, features and the fusion network (the fast `drift.backtest` profile) on the
   products added up to `drift.reference_date` only, in a workspace of its own (the pipeline's artifacts are
   not touched).
2. Every later month (replay batches): its drift decision against the as-of model's training data, the drift
   score (largest z over the signals) and the as-of model's accuracy/macro-F1 on that month's labels.
3. Retraining when drift fires: for the first `drift.backtest.retrains` months that fired, a model trained on
   everything up to the end of that month is scored on the *next* month beside the as-of model.
Writes backtest.json, backtest.csv and backtest.png (drift score vs accuracy drop), and puts every month on the
monitoring dashboard (`paths.monitoring`, project `<registry.model_name>-backtest`, each month at its 15th): a new
installation sees the catalog's own history there before its first batch lands.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import atomic_dir, read_json, write_json
from components.catalog import ADDED, level_key, read_catalog
from components.checkpoint import fusion_checkpoint
from components.config import Params, Paths, deep_merge, params_from_dict, params_to_dict
from components.metrics import classification
from components.monitoring import drift, replay, timeslice, workspace
from components.pipeline import features, ingest, train_fusion, validate
from components.serving.predict import categorize, load_categorizer

log = logging.getLogger(__name__)

# Every stage output folder of Paths moves under the workspace (raw and the MLflow DB are set apart).
STAGE_PATHS = tuple(f.name for f in dataclasses.fields(Paths) if f.name not in ("raw", "corrections", "mlflow_db"))


def as_of_params(params: Params, workdir: Path) -> Params:
    """The pipeline's params with every output under `workdir` and the fast training profile."""
    p = params.drift.backtest
    raw = deep_merge(params_to_dict(params), {
        "paths": {**{k: str(workdir / "artifacts" / k) for k in STAGE_PATHS}, "raw": str(workdir / "data"),
                  "mlflow_db": str(workdir / "mlflow.db")},
        # A small profile: a backtest trains one model per retrained month, on 2 CPU cores.
        "train_fusion": {"init_image_from_baseline": False, "finetune_image": "all",
                         "train": {"epochs": p.epochs, "min_epochs": p.epochs}}})
    return params_from_dict(raw)


def train_as_of(params: Params, source: Path, catalog: pd.DataFrame, cutoff: float, workdir: Path
                ) -> tuple[Params, str]:
    """Train the pipeline on the products added before `cutoff` (undated ones stay out); its params and model."""
    p = as_of_params(params, workdir)
    header, lines = replay.styles_lines(source, params.catalog)
    rows = catalog[timeslice.before(catalog[ADDED], cutoff)]
    with atomic_dir(p.paths.raw) as tmp:
        replay.write_batch(source, rows, lines, header, tmp, params.catalog)
    t0 = time.perf_counter()
    ingest.run(p)
    validate.run(p)
    features.run(p)
    train_fusion.run(p)
    log.info("backtest: model of the products added before %s trained on %d products in %.0f s",
             datetime.fromtimestamp(cutoff, UTC).isoformat(), len(rows), time.perf_counter() - t0)
    return p, str(fusion_checkpoint(p.paths.train_fusion))


def scores(folder: Path, model: str, params: Params) -> dict:
    """Finest-level accuracy/macro-F1 of `model` on a labelled batch folder."""
    read = read_catalog(folder, params.catalog, require_labels=False)
    cat = load_categorizer(model)
    pred, _ = categorize(folder, cat, progress=False, read=read)
    finest = cat.levels[-1]
    y = read.frame[finest].fillna("").astype(str).to_numpy()
    got = pred.set_index("id").loc[read.frame["id"], finest].to_numpy()
    return classification(y[y != ""], got[y != ""])


def drift_score(summary: dict) -> float:
    return max((s["z"] for s in summary["signals"]), default=float("nan"))


def plot(table: pd.DataFrame, z_threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = np.where(table["drift_detected"], "tab:red", "tab:blue")
    ax.scatter(table["drift_score"], table["accuracy_drop"] * 100, c=colours)
    for _, r in table.iterrows():
        ax.annotate(r["month"], (r["drift_score"], r["accuracy_drop"] * 100), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.axvline(z_threshold, ls="--", c="grey", label=f"alarm threshold (z = {z_threshold:.1f})")
    ax.set_xlabel("drift score (largest z over the signals)")
    ax.set_ylabel("articleType accuracy drop vs as-of validation (points)")
    ax.set_title("Replayed months: drift score vs accuracy drop (red: drift fired)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def month_time(batch: str) -> datetime:
    """A replay batch's time on the dashboard: the 15th of its (last) month ("2016-05", "2016-05_to_2016-07")."""
    return datetime.strptime(batch[-7:], "%Y-%m").replace(day=15)


def run(params: Params, output: Path) -> dict:
    source = Path(params.paths.raw)
    work = output.with_name(f"{output.name}_work")
    catalog = read_catalog(source, params.catalog, require_labels=False).frame
    cutoff = timeslice.day_end(params.drift.reference_date)
    months = replay.run(source, work / "batches", params.drift.reference_date, params.drift.min_batch_rows,
                        params.catalog)
    p0, model0 = train_as_of(params, source, catalog, cutoff, work / "as_of")
    val = read_json(Path(p0.paths.train_fusion) / "metrics.json")
    finest = params.catalog.levels[-1]
    base_acc = val[f"val_{level_key(finest)}_accuracy"]
    rows = []
    board = f"{params.registry.model_name}-backtest"
    workspace.drop_project(params.paths.monitoring, board)
    for name in months:
        s = drift.run(p0, work / "batches" / name, work / "drift" / name, model0)
        workspace.record(params.paths.monitoring, board, workspace.drift_values(s), tag=workspace.DRIFT_TAG,
                         batch=name, at=month_time(name), extra={"report": str(work / "drift" / name)})
        q = s["quality"].get(finest, {})
        rows.append({"month": name, "products": s["products"], "drift_detected": s["drift_detected"],
                     "drift_score": round(drift_score(s), 2), "drifted": ",".join(s["drifted"]),
                     "accuracy": q.get("accuracy"), "macro_f1": q.get("macro_f1"),
                     "known_label_accuracy": q.get("known_label_accuracy"),
                     # against validation, on the products whose article type the model knows (unseen ones apart)
                     "accuracy_drop": base_acc - q["known_label_accuracy"] if q.get("known_label_accuracy") else None,
                     "unseen_label_share": q.get("unseen_label_share"),
                     "z_threshold": s["calibration"]["z_threshold"]})
        log.info("backtest %s: %s", name, rows[-1])
    table = pd.DataFrame(rows)
    retrains = []
    names = list(months)
    for i, name in enumerate(names[:-1]):
        if len(retrains) >= params.drift.backtest.retrains or not table.loc[i, "drift_detected"]:
            continue
        _, model1 = train_as_of(params, source, catalog, timeslice.month_end(name), work / f"retrained_{name}")
        nxt = work / "batches" / names[i + 1]
        old, new = scores(nxt, model0, params), scores(nxt, model1, params)
        retrains.append({"fired_on": name, "scored_on": names[i + 1], "as_of_accuracy": old["accuracy"],
                         "as_of_macro_f1": old["macro_f1"], "retrained_accuracy": new["accuracy"],
                         "retrained_macro_f1": new["macro_f1"]})
        log.info("backtest retrain after %s: %s", name, retrains[-1])
    result = {"reference_date": params.drift.reference_date,
              "as_of_products": int(timeslice.before(catalog["catalogAddDate"], cutoff).sum()),
              "as_of_val_accuracy": base_acc, "as_of_val_macro_f1": val[f"val_{level_key(finest)}_macro_f1"],
              "profile": {"epochs": params.drift.backtest.epochs}, "months": rows, "retrains": retrains,
              "fired": int(table["drift_detected"].sum()), "months_total": len(table),
              "correlation_score_vs_drop": float(table[["drift_score", "accuracy_drop"]].corr().iloc[0, 1])}
    with atomic_dir(output) as tmp:
        write_json(tmp / "backtest.json", result)
        table.to_csv(tmp / "backtest.csv", index=False)
        plot(table, float(table["z_threshold"].iloc[0]), tmp / "backtest.png")
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    from components.config import load_params

    ap = argparse.ArgumentParser(prog="deepfusion backtest", description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, help="report folder (default: params paths.backtest)")
    args = ap.parse_args(argv)  # before the params: --help works anywhere
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    result = run(params, args.output or Path(params.paths.backtest))
    for m in result["months"]:
        print(f"{m['month']}: {'DRIFT' if m['drift_detected'] else 'quiet'} score {m['drift_score']}, "
              f"accuracy {m['accuracy']}, macro-F1 {m['macro_f1']}")
    for r in result["retrains"]:
        print(f"retrained after {r['fired_on']}: on {r['scored_on']} accuracy {r['as_of_accuracy']:.4f} -> "
              f"{r['retrained_accuracy']:.4f}, macro-F1 {r['as_of_macro_f1']:.4f} -> {r['retrained_macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
