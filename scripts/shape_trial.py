"""Run the whole product on one catalog in a workspace of its own: dvc repro, register, promote, predict.

    .venv/bin/python scripts/shape_trial.py DATA_DIR PARAMS.yaml WORKSPACE [--profile params.quick.yaml]

The workspace gets this project's pipeline (dvc.yaml) and code, DATA_DIR linked as `data/`, and PARAMS.yaml with
the profile merged over it; MLflow is the workspace's own SQLite file. After `dvc repro` it registers the model
(`deepfusion registry register`), promotes it through the gate (`registry promote`), then categorizes the test
split's products as a new batch through `deepfusion predict --model models:/<name>@champion` (the rows copied out
of the export in its own shape, labels included but unused) and scores the predictions against the labels.
It prints one JSON summary (stage wall times, evaluate's headline, the served model's accuracy per level) and
keeps it in WORKSPACE/trial.json. Issue 40's proof: a re-shaped catalog (scripts/reshape_catalog.py) beside ours.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.atomic_io import read_json  # noqa: E402
from components.catalog import ID, IMAGE, read_catalog  # noqa: E402
from components.config import deep_merge, load_raw, params_from_dict  # noqa: E402

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    """Run one command in the workspace, its output passed through; its wall time in seconds."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t0


def make_workspace(data: Path, params: dict, ws: Path) -> None:
    ws.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(ROOT / name, ws / name)
    shutil.copytree(ROOT / "corrections", ws / "corrections")  # no correction: the header only
    shutil.copytree(ROOT / "components", ws / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (ws / "data").symlink_to(data.resolve())
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_batch(ws: Path, params, out: Path) -> pd.DataFrame:
    """Copy the test split's rows out of the export, in its own shape, with their images: a batch to predict.
    Returns the test split's labels by id (from ingest's table)."""
    schema = params.catalog
    products = pd.read_parquet(ws / params.paths.ingest / "products.parquet")
    test = products[products["split"] == "test"]
    keep = set(test[ID].astype(str))
    frame = read_catalog(ws / "data", schema, require_labels=True).frame
    out.mkdir(parents=True)
    for rel in frame.loc[frame[ID].astype(str).isin(keep), IMAGE]:
        src = ws / "data" / rel
        if rel and src.is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
    for name in schema.files:  # every file of the export, cut to the test rows by the raw id column
        src = ws / "data" / name
        if not src.is_file():
            continue
        with src.open(newline="", encoding="utf-8") as fh, (out / name).open("w", newline="", encoding="utf-8") as dst:
            reader = csv.DictReader(fh)
            writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(r for r in reader if r[schema.id].strip() in keep)
    return test.set_index(test[ID].astype(str))


def score(pred: pd.DataFrame, labels: pd.DataFrame, levels: list[str]) -> dict:
    """The served model's accuracy per level on the batch (rows it could not read count as wrong)."""
    pred = pred.set_index(pred["id"].astype(str))
    out = {"rows": len(labels), "predicted": int((pred["status"].astype(str).str.startswith("ok")).sum()),
           "status": pred["status"].astype(str).str.split(":").str[0].value_counts().to_dict()}
    for lvl in levels:
        got = pred[lvl].reindex(labels.index).fillna("").astype(str)
        out[lvl] = round(float((got == labels[lvl].astype(str)).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="the catalog export folder")
    ap.add_argument("params", type=Path, help="params.yaml for it (its catalog: section describes the export)")
    ap.add_argument("workspace", type=Path, help="a new folder")
    ap.add_argument("--profile", type=Path, help="params overrides merged over PARAMS (e.g. params.quick.yaml)")
    ap.add_argument("--resume", action="store_true",
                    help="continue in an existing WORKSPACE (after fixing a file of its components/ by hand: dvc "
                         "repro reruns only what changed)")
    args = ap.parse_args(argv)
    if args.workspace.exists() and not args.resume:
        ap.error(f"{args.workspace}: exists; give a new folder (or --resume)")
    raw = load_raw(args.params)
    if args.profile:
        raw = deep_merge(raw, load_raw(args.profile))
    params = params_from_dict(raw)  # a wrong key stops here, before anything runs
    ws = args.workspace.resolve()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own mlflow.db
    times = {}
    if args.resume:
        shutil.rmtree(ws / "batch", ignore_errors=True)
    else:
        make_workspace(args.data, raw, ws)
        run(["dvc", "init", "--no-scm", "-q"], ws, env)
    times["dvc repro"] = run(["dvc", "repro"], ws, env)
    times["registry register"] = run(["deepfusion", "registry", "register"], ws, env)
    times["registry promote"] = run(["deepfusion", "registry", "promote"], ws, env)
    labels = test_batch(ws, params, ws / "batch")
    model = f"models:/{params.registry.model_name}@champion"
    times["predict"] = run(["deepfusion", "predict", "batch", "--output", "pred.csv", "--model", model], ws, env)
    results = read_json(ws / params.paths.evaluate / "metrics.json")
    levels = list(params.catalog.levels)
    summary = {"data": str(args.data), "params": str(args.params), "profile": str(args.profile or ""),
               "levels": levels, "seconds": {k: round(v, 1) for k, v in times.items()},
               "served": results.get("served_model"), "inputs": results.get("inputs"),
               "predict_champion": score(pd.read_csv(ws / "pred.csv", dtype=str, keep_default_na=False),
                                         labels, levels)}
    (ws / "trial.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
