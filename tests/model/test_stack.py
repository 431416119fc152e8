"""The stacked categorizer on the trained synthetic pipeline: what it learns from, how it fails, what it serves."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.checkpoint import CheckpointError
from components.data import cached_products
from components.pipeline import stack
from components.serving import predict
from components.serving.stacked import StackedCategorizer


def test_combiner_learns_only_from_products_no_expert_trained_on(trained, tmp_path, monkeypatch):
    params, _, _ = trained
    seen = []
    real = stack.variant_inputs

    def spy(experts, frame, *args, **kwargs):
        seen.append(frame["id"].to_numpy())
        return real(experts, frame, *args, **kwargs)

    read, real_read = [], stack.cached_products

    def read_spy(ingest_dir, idx):
        read.append(idx)
        return real_read(ingest_dir, idx)

    monkeypatch.setattr(stack, "variant_inputs", spy)
    monkeypatch.setattr(stack, "cached_products", read_spy)
    out = dataclasses.replace(params, paths=dataclasses.replace(params.paths, stack=str(tmp_path / "stack")))
    stack.run(out)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    # The int8 towers' calibration images come from train products (with an image); the combiner's rows do not.
    calibration = np.load(tmp_path / "stack" / "calibration.npy")
    assert len(read) == 2 and len(calibration) == len(read[0]) > 0
    assert (df["split"].to_numpy()[read[0]] == "train").all() and df["has_image"].to_numpy()[read[0]].all()
    trained_on = set(df.loc[df["split"] == "train", "id"])  # what every expert trained on
    train_groups = set(df.loc[df["split"] == "train", "group"])
    fitted = set(np.concatenate(seen))
    assert fitted and not fitted & trained_on
    assert not set(df.loc[df["id"].isin(fitted), "group"]) & train_groups  # not even a duplicate listing
    assert fitted == set(df.loc[df["split"] == "val", "id"])  # never the test split


def test_an_expert_the_variant_leaves_untouched_is_not_run_again(trained):
    params, _, _ = trained
    cat = StackedCategorizer.load(Path(params.paths.stack) / "combiner.json", candidates=True)
    experts, paths = cat.experts, cat.combiner.paths
    split = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")["split"].to_numpy()
    frame, images = cached_products(params.paths.ingest, np.flatnonzero(split == "val"))
    _, full, _ = experts.on_variant(frame, images, "full", 2, paths, experts.names)
    for variant, reused in (("no_image", {"tfidf"}), ("no_metadata", set())):  # TF-IDF reads title + metadata
        _, fresh, x_fresh = experts.on_variant(frame, images, variant, 2, paths, experts.names)
        ran, real = [], experts.probs
        experts.probs = lambda f, a, ran=ran, real=real, **kw: (ran.append(set(kw["names"])), real(f, a, **kw))[1]
        try:
            _, probs, x = experts.on_variant(frame, images, variant, 2, paths, experts.names, full=full)
        finally:
            del experts.probs
        assert ran == [set(experts.names) - reused] and "fusion" in ran[0]  # fusion reads every input
        for e in experts.names:  # the same numbers as running every expert again
            assert all(np.array_equal(p, q) for p, q in zip(probs[e], fresh[e]))
        assert np.array_equal(x.logp, x_fresh.logp) and np.array_equal(x.mask, x_fresh.mask)


def test_evaluate_reports_stack_inputs_slices_and_ablations(trained):
    params, _, _ = trained
    m = json.loads((Path(params.paths.evaluate) / "metrics.json").read_text())
    assert m["served_model"] == "stacked"
    assert set(m["inputs"]) == {"full", "cut_title", "no_title", "no_image", "no_metadata"}
    assert {"stacked", "tfidf", "fusion"} <= set(m["inputs"]["cut_title"])
    for v, row in m["stacked_vs_best_expert"].items():  # the bar on each input is its best single expert
        best = row["expert"]
        assert best != "stacked" and row["macro_f1"]["diff"] == pytest.approx(
            m["inputs"][v]["stacked"]["macro_f1"] - m["inputs"][v][best]["macro_f1"])
        assert all(r["ci_low"] <= r["ci_high"]
                   for r in (row["accuracy"], row["macro_f1"], row["macro_f1_truth_classes"]))
        assert set(row["predicted_outside_truth"]) == {"stacked", best}
        if not any(row["predicted_outside_truth"].values()):  # same classes either way: the two differences agree
            assert row["macro_f1_truth_classes"]["diff"] == pytest.approx(row["macro_f1"]["diff"])
    chosen = json.loads((Path(params.paths.stack) / "metrics.json").read_text())["experts"]
    candidates = json.loads((Path(params.paths.stack) / "combiner.json").read_text())["files"]
    assert len(candidates) >= 2 and set(chosen) <= set(candidates)
    for e in candidates:  # a chosen expert left out, a dropped one put back
        assert f"stacked[{'-' if e in chosen else '+'}{e}]" in m or chosen == [e]
    assert m["stacked"]["business"]["hierarchy_consistency"] == 1.0  # paths, never mixed levels


def test_predict_uses_the_stack_by_default(trained, monkeypatch):
    params, data, _ = trained
    monkeypatch.setattr(predict, "default_model", lambda: str(Path(params.paths.stack) / "combiner.json"))
    cat = predict.load_categorizer(predict.default_model())
    assert isinstance(cat, StackedCategorizer)
    pred, emb = predict.categorize(data, cat, embeddings=True, progress=False)
    assert len(pred) == 180 and emb["text"].shape[1] == cat.model.cfg.embed_dim  # search keeps HUSE's space
    ok = pred[pred["status"] == "ok"]
    assert (ok["articleType_confidence"] > 0).all()


@pytest.mark.parametrize("damage", ["missing", "corrupt", "retrained"])
def test_a_bad_expert_file_is_named(trained, tmp_path, damage):
    params, _, _ = trained
    spec = json.loads((Path(params.paths.stack) / "combiner.json").read_text())
    files = {e: tmp_path / Path(f).name.replace("model", e) for e, f in spec["files"].items()}
    for e, f in spec["files"].items():
        shutil.copy(f, files[e])
    target = files["fusion"]
    if damage == "missing":
        target.unlink()
    elif damage == "corrupt":
        target.write_bytes(b"not a checkpoint")
    else:
        target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match=str(target)):
        StackedCategorizer.load(Path(params.paths.stack) / "combiner.json", files)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other"])
def test_the_int8_calibration_is_checked_and_named(trained, tmp_path, damage):
    params, _, _ = trained
    spec_file = Path(params.paths.stack) / "combiner.json"
    spec = json.loads(spec_file.read_text())
    assert StackedCategorizer.load(spec_file).experts.int8 == tuple(spec["int8"]["experts"])  # served as fitted
    assert "fusion" in spec["int8"]["experts"] and spec["int8"]["images"] > 0
    files = {e: Path(f) for e, f in spec["files"].items()}
    target = files["calibration"] = tmp_path / "calibration.npy"
    if damage == "corrupt":
        target.write_bytes(b"not an array")
    elif damage == "other":  # valid images, but not those the combiner was fitted with
        np.save(target, np.zeros((4, 80, 64, 3), np.uint8))
    with pytest.raises(CheckpointError, match=str(target)):
        StackedCategorizer.load(spec_file, files)
