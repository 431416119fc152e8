"""The real pipeline (`dvc repro`) on a slice of the real catalog, with the tiny params profile, on CPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import deep_merge, load_raw
from tests.conftest import ROOT, TINY_OVERRIDES

DATA = ROOT / "data"
pytestmark = [pytest.mark.slow, pytest.mark.realdata,
              pytest.mark.skipif(not (DATA / "styles.csv").is_file(),
                                 reason="real catalog not pulled (bash scripts/setup.sh)")]
EVERY = 20  # every 20th product: ~2,000 products across all frequent classes


def make_slice(dst: Path) -> Path:
    """Every EVERY-th row of the real export, same layout (comma titles stay unquoted, as in the source)."""
    (dst / "images").mkdir(parents=True)
    lines = (DATA / "styles.csv").read_text(encoding="utf-8").splitlines()
    plines = pd.read_csv(DATA / "products.csv", dtype=str, keep_default_na=False)
    keep = [lines[0]] + lines[1::EVERY]
    ids = {ln.split(",", 1)[0] for ln in keep[1:]}
    (dst / "styles.csv").write_text("\n".join(keep) + "\n", encoding="utf-8")
    plines[plines["id"].isin(ids)].to_csv(dst / "products.csv", index=False)
    for pid in ids:
        src = DATA / "images" / f"{pid}.jpg"
        if src.is_file():
            shutil.copy(src, dst / "images" / src.name)
    return dst


def slice_workspace(ws: Path, code: Path = ROOT, environ: dict[str, str] | None = None) -> Path:
    """A DVC project on the real slice with the tiny profile, running `code`'s components/ and dvc.yaml
    (also scripts/slice_repro.py's, to compare two checkouts' outputs)."""
    make_slice(ws / "data")
    shutil.copy(code / "dvc.yaml", ws / "dvc.yaml")
    if (code / "corrections").is_dir():  # the ingest stage's corrections dependency (none: the header only)
        shutil.copytree(code / "corrections", ws / "corrections")
    os.symlink(code / "components", ws / "components")
    raw = deep_merge(load_raw(code / "params.yaml"), TINY_OVERRIDES)
    raw = deep_merge(raw, {"ingest": {"min_class_count": 20},
                           "train_fusion": {"train": {"epochs": 10, "lr": 3.0e-3, "patience": 10}},
                           "train_baseline": {"train": {"epochs": 3}}})
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=ws, check=True, env=environ or env())
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = slice_workspace(tmp_path_factory.mktemp("ws"))
    proc = subprocess.run(["dvc", "repro"], cwd=ws, env=env(), capture_output=True, text=True)
    (ws / "repro.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return ws


def test_ingest_and_validate_on_the_real_slice(workspace):
    report = json.loads((workspace / "artifacts/ingest/report.json").read_text())
    s = report["summary"]
    assert s["rows_in"] == s["curated"] + s["quarantined_rows"]
    df = pd.read_parquet(workspace / "artifacts/ingest/products.parquet")
    # The slice keeps comma titles intact when they are in it, and no group spans two splits.
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert json.loads((workspace / "artifacts/validate/report.json").read_text())["success"]


def env() -> dict[str, str]:
    e = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
         "MLFLOW_DISABLE_TELEMETRY": "true"}
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def test_every_model_trained_and_reported(workspace):
    for name in ("tfidf", "image", "text", "metadata"):
        m = json.loads((workspace / f"artifacts/train_baseline/metrics_{name}.json").read_text())
        assert 0.0 <= m["val_article_accuracy"] <= 1.0
    fusion = json.loads((workspace / "artifacts/train_fusion/metrics.json").read_text())
    assert 0.0 <= fusion["val_article_macro_f1"] <= 1.0 and "train_seconds" not in fusion
    # Training stages write only their DVC outputs: MLflow is the publish step's business.
    assert not (workspace / "mlflow.db").exists()


def test_a_forced_rerun_rewrites_no_hash(workspace):
    """`dvc repro -f` of the data stages recomputes them from scratch; dvc.lock must not change a byte."""
    lock = (workspace / "dvc.lock").read_bytes()
    for stage in ("ingest", "validate", "features"):
        subprocess.run(["dvc", "repro", "-f", "-s", stage], cwd=workspace, env=env(), check=True,
                       capture_output=True)
    assert (workspace / "dvc.lock").read_bytes() == lock
    out = subprocess.run(["dvc", "status"], cwd=workspace, env=env(), capture_output=True, text=True,
                         check=True).stdout
    assert "changed" not in out, out
    repro = subprocess.run(["dvc", "repro"], cwd=workspace, env=env(), capture_output=True, text=True, check=True)
    assert "didn't change, skipping" in repro.stdout and "Running stage" not in repro.stdout, repro.stdout


def test_publish_logs_each_model_once(workspace):
    import mlflow

    cmd = [sys.executable, "-m", "components.lifecycle.publish"]
    first = subprocess.run(cmd, cwd=workspace, env=env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(cmd, cwd=workspace, env=env(), capture_output=True, text=True, check=True)
    assert again.stdout == first.stdout  # the same runs, found by their outputs' md5: no duplicates
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = {line.split(": run ")[0]: line.split(": run ")[1] for line in first.stdout.splitlines()}
    assert set(runs) == {"train_baseline/tfidf", "train_baseline/image", "train_baseline/text",
                         "train_baseline/metadata", "train_fusion", "stack"}
    fusion = client.get_run(runs["train_fusion"])
    history = client.get_metric_history(fusion.info.run_id, "val_macro_f1")
    assert len(history) == json.loads((workspace / "artifacts/train_fusion/metrics.json").read_text())["epochs_run"]
    assert "train_seconds" in fusion.data.metrics
    served = client.get_run(runs["stack"])  # the stacked categorizer is what we serve: it carries the test view
    assert "test.articleType.macro_f1" in served.data.metrics
    assert served.data.tags["deepfusion.model_uri"].startswith("models:/")


def test_shuffling_text_or_metadata_hurts_fusion(workspace):
    """Misalignment guard: if fusion ignored the pairing of inputs, shuffling would not matter."""
    import torch

    from components.catalog import FINEST
    from components.checkpoint import load_checkpoint
    from components.data import load_arrays, split_arrays
    from components.models.runtime import PREDICT_BATCH, predict_arrays

    model, _, _ = load_checkpoint(workspace / "artifacts/train_fusion/model/model.pt")
    arrays, split = load_arrays(str(workspace / "artifacts/ingest"), str(workspace / "artifacts/features"))
    test = split_arrays(arrays, split)["val"]
    y = test.labels[:, FINEST]

    def acc(a) -> float:
        probs = predict_arrays(model, a, PREDICT_BATCH, torch.device("cpu"))["probs"][FINEST]
        return float((probs.argmax(1) == y).mean())

    base = acc(test)
    perm = np.random.default_rng(0).permutation(len(test))
    shuffled_text = test.subset(np.arange(len(test)))
    shuffled_text.tokens = shuffled_text.tokens[perm]
    shuffled_text.subwords = shuffled_text.subwords[perm]
    shuffled_meta = test.subset(np.arange(len(test)))
    for k in ("cat", "num", "attrs"):
        setattr(shuffled_meta, k, getattr(shuffled_meta, k)[perm])
    assert acc(shuffled_text) < base - 0.10
    assert acc(shuffled_meta) < base
