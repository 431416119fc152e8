"""Stages are functions of their inputs: the same code, data, params and seed give byte-identical outputs.

That is what lets DVC reuse a cache or an artifacts remote: a fresh `dvc repro` of an unchanged pipeline
must not rewrite any hash in dvc.lock.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from components.pipeline import features, ingest, train_baseline, validate

pytestmark = pytest.mark.slow

# Every DVC output of these stages (dvc.yaml outs and metrics), relative to their paths.<stage> folder.
OUTPUTS = {
    "ingest": ["products.parquet", "images.npy", "quarantine.csv", "report.json", "metrics.json"],
    "validate": ["report.json"],
    "features": ["encoders.json", "features.npz", "summary.json"],
    "train_baseline": ["metadata/model.pt", "metrics_metadata.json", "tfidf/model.npz", "metrics_tfidf.json"],
}


def digests(params) -> dict[str, str]:
    out = {}
    for stage, files in OUTPUTS.items():
        for f in files:
            path = Path(getattr(params.paths, stage)) / f
            out[f"{stage}/{f}"] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def run_stages(params) -> None:
    ingest.run(params)
    validate.run(params)
    features.run(params)
    train_baseline.run(params, "tfidf")
    train_baseline.run(params, "metadata")


def test_a_rerun_rewrites_no_output_byte(tiny_params):
    run_stages(tiny_params)
    first = digests(tiny_params)
    torch.rand(1000)  # whatever ran before a stage (here: the first run) must not leak into the next
    run_stages(tiny_params)
    assert digests(tiny_params) == first
    # Timings are kept, but beside the outputs, for logs and MLflow (ops.publish).
    assert (Path(tiny_params.paths.train_baseline) / "timings_metadata.json").is_file()


def test_another_seed_gives_other_weights(tiny_params):
    run_stages(tiny_params)
    first = torch.load(Path(tiny_params.paths.train_baseline) / "metadata" / "model.pt", weights_only=True)
    other_params = dataclasses.replace(tiny_params, seed=tiny_params.seed + 1)
    train_baseline.run(other_params, "metadata")
    other = torch.load(Path(tiny_params.paths.train_baseline) / "metadata" / "model.pt", weights_only=True)
    w1, w2 = first["state_dict"], other["state_dict"]
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if w1[k].is_floating_point())
