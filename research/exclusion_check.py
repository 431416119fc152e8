"""What does audit.exclude_from_training do to the scores? Printed, never asserted.

    .venv/bin/python research/exclusion_check.py [--stages train_baseline@tfidf]

Runs the given stages (default: the TF-IDF expert, minutes on 2 cores; `train_baseline@tfidf train_fusion stack
evaluate` for the served model, about an hour) in a run workspace with `audit.exclude_from_training: true`
(orchestration.run_workspace: the project's params.yaml and outputs are left alone, unchanged stages come from
the shared DVC cache), then prints, for the project's result (option off) and the workspace's (on): TF-IDF
articleType accuracy and macro-F1 on validation, on the whole test split, and on the test products whose label
the audit does not suspect (test labels are noisy too). When `evaluate` is among the stages, the served model's
rows from both evaluate outputs are printed as well.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from components.catalog import FINEST
from components.config import load_params
from components.encoders import encode_labels, load_encoders
from components.metrics import classification
from components.models.tfidf import load_tfidf
from components.orchestration.run_workspace import materialize
from components.pipeline.evaluate import audit_suspects

ROOT = Path(__file__).resolve().parents[1]


RUN_ID = "exclusion-check"


def tfidf_scores(project: Path) -> dict[str, dict[str, float]]:
    with contextlib.chdir(project):
        params = load_params()
        enc = load_encoders(params.paths.features)
        df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
        model = load_tfidf(Path(params.paths.train_baseline) / "tfidf" / "model.npz")
        suspects = audit_suspects(params.paths.audit)
        excluded = len(pd.read_csv(Path(params.paths.audit) / "exclude.csv"))
    n = [len(v) for v in enc.labels.values()]
    out = {"excluded_from_training": {"products": excluded}}
    for name, rows in (("val", df["split"] == "val"), ("test", df["split"] == "test"),
                       ("test, label not suspected", (df["split"] == "test") & ~df["id"].isin(suspects))):
        part = df[rows]
        pred = model.predict_proba(part, n)[FINEST].argmax(1)
        scores = classification(encode_labels(part, enc)[:, FINEST], pred)
        out[name] = {"products": len(part), "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}
    return out


def served_rows(project: Path) -> dict:
    path = project / "artifacts" / "evaluate" / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    served = m["served_model"]
    return {"test": m[served]["articleType"], **{k: v.get(served) for k, v in m.get("slices", {}).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["train_baseline@tfidf"])
    args = ap.parse_args()
    ws = materialize(ROOT, RUN_ID, {"audit": {"exclude_from_training": True}})
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run([dvc, "checkout", "-q", "--allow-missing"], cwd=ws, check=True, env=env)
    for stage in args.stages:
        subprocess.run([dvc, "repro", "-q", stage], cwd=ws, check=True, env=env)
    print(f"workspace with the option on: {ws}")
    for label, project in (("off (project)", ROOT), ("on (run workspace)", ws)):
        print(f"\n== audit.exclude_from_training {label}")
        for name, s in tfidf_scores(project).items():
            print(f"  TF-IDF {name:<28} " + (f"{s['products']} products" if len(s) == 1 else
                  f"n={s['products']:>5}  accuracy {100 * s['accuracy']:.2f} %  macro-F1 {s['macro_f1']:.4f}"))
        if "evaluate" in args.stages:
            for name, s in served_rows(project).items():
                print(f"  served model {name:<40} {json.dumps(s)}")


if __name__ == "__main__":
    main()
