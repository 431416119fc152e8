"""Plain functions behind the Airflow tasks (no Airflow imports): each is idempotent and writes atomically.

Every function takes the project folder `home` and runs there, because params.yaml paths are relative.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import yaml

from components.artifacts import atomic_write_bytes, read_json, write_json
from components.config import deep_merge, load_params, load_raw, params_from_dict

log = logging.getLogger(__name__)

# <landing>/_state/<batch>.json marks a processed batch; <landing>/_failed/ keeps rejected ones.
FAILED = "_failed"


class BatchRejected(RuntimeError):
    """A new catalog batch failed validation; it was moved to <landing>/_failed/ with its report."""


def run_overrides(conf: dict) -> dict:
    """The retrain form (backbone, epochs) as a params.yaml override; empty values change nothing."""
    out: dict = {}
    if conf.get("backbone"):
        # Stage widths and the stem option belong to the default backbone: a chosen one runs as timm ships it.
        out = deep_merge(out, {"model": {"backbone": str(conf["backbone"]), "backbone_channels": [],
                                         "low_res_stem": False}})
    if int(conf.get("epochs") or 0) > 0:
        epochs = {"train": {"epochs": int(conf["epochs"])}}
        out = deep_merge(out, {"train_baseline": epochs, "train_fusion": epochs})
    return out


def apply_overrides(home: Path, overrides: dict) -> dict:
    """Merge overrides into home/params.yaml after checking the result against the schema."""
    if not overrides:
        return {}
    path = Path(home) / "params.yaml"
    merged = deep_merge(load_raw(path), overrides)
    params_from_dict(merged)  # raises ConfigError naming the bad key before anything is written
    atomic_write_bytes(path, yaml.safe_dump(merged, sort_keys=False).encode())
    return overrides


def pending_batches(landing: Path) -> list[str]:
    """Batch folders in the landing area not processed yet (idempotency marker) and not failed."""
    landing = Path(landing)
    if not landing.is_dir():
        return []
    done = {p.stem for p in (landing / "_state").glob("*.json")}
    return sorted(str(p) for p in landing.iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")) and p.name not in done)


def check_batch(home: Path, batch: str) -> str:
    """Validate a new batch with the row-level GX suite; a failing batch moves to _failed/ with its report."""
    from components.catalog import CatalogError, read_catalog
    from components.validate import validate_batch

    batch_path = Path(batch)
    with contextlib.chdir(home):
        params = load_params()
        try:
            frame = read_catalog(batch_path, require_labels=False).frame
            frame["has_image"] = [(batch_path / p).is_file() for p in frame["image"]]
            results = validate_batch(frame, labeled=False,
                                     max_missing_image_share=params.validate.max_missing_image_share)
            failures = [f for r in results for f in r.failures]
        except CatalogError as exc:
            failures = [str(exc)]
    if failures:
        dest = batch_path.parent / FAILED / batch_path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(batch_path), dest)
        write_json(dest / "validation_report.json", {"success": False, "failures": failures})
        raise BatchRejected(f"{batch_path.name}: {len(failures)} validation failure(s), batch moved to {dest}:\n  - "
                            + "\n  - ".join(failures))
    return batch


def serving_model(home: Path) -> str:
    """models:/<name>@champion when the registry has a champion, else the pipeline's fusion checkpoint."""
    from components import tracking

    with contextlib.chdir(home):
        params = load_params()
        c = tracking.client(params)
        if tracking.alias_version(c, params.registry.model_name, "champion"):
            return f"models:/{params.registry.model_name}@champion"
        from components.checkpoint import fusion_checkpoint

        return str(Path(home) / fusion_checkpoint(params.paths.train_fusion))


def drift_batch(home: Path, batch: str, model: str) -> dict:
    """Drift report for one batch, logged to MLflow, then the batch is marked processed."""
    from components import drift, tracking

    batch_path = Path(batch)
    with contextlib.chdir(home):
        params = load_params()
        out = Path(params.drift.output) / batch_path.name
        summary = drift.run(params, batch_path, out, model)
        tracking.log_report(params, f"drift/{batch_path.name}", out,
                            {"drift_detected": float(summary["drift_detected"]),
                             "drifted_column_share": summary["drifted_column_share"],
                             **{f"{k}_embedding_auc": v for k, v in summary["embedding_auc"].items()}})
        write_json(batch_path.parent / "_state" / f"{batch_path.name}.json",
                   {"drift_detected": summary["drift_detected"], "report": str(Path(home) / out)})
    return {"batch": batch, "drift_detected": summary["drift_detected"], "reasons": summary["reasons"]}


def categorize_batch(home: Path, batch: str, model: str, out_root: str = "artifacts/categorize") -> dict:
    """Predictions for a batch plus the review queue (products below the auto-accept confidence)."""
    from components.predict import categorize, load_categorizer

    batch_path = Path(batch)
    with contextlib.chdir(home):
        params = load_params()
        threshold = auto_accept_threshold(Path(params.paths.evaluate) / "metrics.json")
        pred, _ = categorize(batch_path, load_categorizer(model), progress=False)
        review = pred[(pred["status"] != "ok") & (pred["status"] != "no_image")
                      | (pred["articleType_confidence"].fillna(0) < threshold)]
        out = Path(out_root) / batch_path.name
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "predictions.csv", pred.to_csv(index=False).encode())
        atomic_write_bytes(out / "review_queue.csv", review.to_csv(index=False).encode())
    return {"batch": batch, "products": len(pred), "to_review": len(review), "threshold": threshold,
            "output": str(Path(home) / out)}


def auto_accept_threshold(evaluate_metrics: Path, target: str = "0.99", default: float = 0.99) -> float:
    """Confidence above which the fusion model reached the target precision on the test split."""
    if not evaluate_metrics.is_file():
        return default
    business = read_json(evaluate_metrics).get("fusion", {}).get("business", {})
    return float(business.get(f"threshold_at_{target}", default))


def main() -> None:
    """python -m components.orchestration profile params.gpu.yaml  (merge a params profile into params.yaml)"""
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "profile":
        raise SystemExit("usage: python -m components.orchestration profile PROFILE.yaml")
    changed = apply_overrides(Path.cwd(), load_raw(sys.argv[2]))
    print(f"params.yaml updated with {sys.argv[2]}: {sorted(changed)}")


if __name__ == "__main__":
    main()
