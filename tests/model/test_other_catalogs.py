"""The whole pipeline on catalogs shaped unlike ours (issue 40): a 2-level taxonomy in one path column with SKU
ids, images named by a column and plain attribute columns; a 5-level taxonomy in level columns with no metadata
at all. Each is declared only in params (`catalog:`), trained, evaluated and asked to categorize a new batch."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import params_from_dict
from tests.conftest import make_shaped_catalog, shaped_raw, shaped_taxonomy

SHAPES = {
    "2 levels, path column, SKUs, image column, attributes": dict(depth=2, path_column=True, sku=True,
                                                                  image_column=True, attributes=True),
    "5 levels, level columns, no metadata": dict(depth=5, metadata=False),
}


def run_pipeline(tmp: Path, shape: dict):
    from components.pipeline import audit, evaluate, features, ingest, stack, train_baseline, train_fusion, validate

    data, schema = make_shaped_catalog(tmp / "data", n=180, seed=3, **shape)
    params = params_from_dict(shaped_raw(tmp, data, schema, {
        "train_fusion": {"init_image_from_baseline": False, "finetune_image": "all",
                         "train": {"epochs": 12, "patience": 12, "lr": 3.0e-3, "batch_size": 32,
                                   "modality_dropout": 0.4}},
        "stack": {"experts": ["tfidf", "fusion"]}, "audit": {"folds": 3}}))
    ingest.run(params)
    validate.run(params)
    features.run(params)
    audit.run(params)
    train_baseline.run(params, "tfidf")
    train_fusion.run(params)
    stack.run(params)
    results = evaluate.run(params)
    return params, data, schema, results


@pytest.fixture(scope="module")
def trained_shape(tmp_path_factory):
    """Each shape trained once per module (~40 s each on 2 cores)."""
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = run_pipeline(tmp_path_factory.mktemp("shape"), SHAPES[name])
        return done[name]
    return get


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_catalog_declared_in_params_trains_evaluates_and_categorizes(tmp_path, trained_shape, name):
    from components.serving.predict import categorize, load_categorizer
    from components.serving.stacked import COMBINER_FILE

    shape = SHAPES[name]
    depth = shape["depth"]
    params, data, schema, results = trained_shape(name)
    levels = params.catalog.levels
    served = results["served_model"]
    # scored at every level of this catalog, the finest one learnt (6 classes; titles name them)
    assert [k for k in results[served] if k in levels] == list(levels)
    assert results[served][levels[-1]]["accuracy"] >= 0.8
    comparison = (Path(params.paths.evaluate) / "comparison.md").read_text()
    assert f"| {levels[-1]} acc |" in comparison
    audit_table = pd.read_csv(Path(params.paths.audit) / "audit.csv", dtype={"id": str})
    assert [c for c in audit_table if c.startswith("current_")] == [f"current_{lvl}" for lvl in levels]

    # a new batch in the same shape: predictions name this catalog's levels, ids come back as written
    batch, _ = make_shaped_catalog(tmp_path / "batch", start=9000, n=24, seed=11, **shape)
    cat = load_categorizer(str(Path(params.paths.stack) / COMBINER_FILE))
    pred, emb = categorize(batch, cat, progress=False, schema=params.catalog, embeddings=True)
    assert list(pred.columns) == ["id", *[c for lvl in levels for c in (lvl, f"{lvl}_confidence")], "status"]
    sent = [r[schema["id"]] for r in csv.DictReader((batch / "items.csv").open())]
    assert [str(i) for i in pred["id"]] == [str(int(s)) if schema["id_type"] == "int" else s for s in sent]
    assert emb["ids"].dtype.kind == ("i" if schema["id_type"] == "int" else "U")
    truth = dict(zip(sent, (p[-1] for p in (shaped_taxonomy(depth)[i % 6] for i in range(24)))))
    ok = pred["status"] == "ok"
    hits = [truth[s] == p for s, p, o in zip(sent, pred[levels[-1]], ok) if o]
    assert np.mean(hits) >= 0.8
    # a predicted path is one of the taxonomy's paths
    paths = {tuple(r) for r in pred.loc[ok, list(levels)].itertuples(index=False)}
    assert paths <= set(shaped_taxonomy(depth))


def test_the_served_model_reads_the_export_s_own_column_names(tmp_path, trained_shape):
    """The pyfunc model carries its catalog schema: a SKU catalog's rows go in under their own names."""
    from components.serving.mlflow_model import CATALOG_ARTIFACT, CategorizerModel, example_frame, input_schema
    from components.serving.stacked import COMBINER_FILE

    params, data, schema, _ = trained_shape("2 levels, path column, SKUs, image column, attributes")
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    ex = example_frame(df[df.split == "val"], data, params.catalog, n=3)
    assert list(ex.columns) == ["sku", "name", "colour", "fit", "cost", "material", "pattern", "image_file"]
    spec = {c.name: c.type.name for c in input_schema(params.catalog, list(ex.columns)).inputs}
    assert spec["sku"] == "string"
    (tmp_path / "catalog.json").write_text(json.dumps({"catalog": dataclasses.asdict(params.catalog),
                                                       "columns": list(ex.columns)}))
    model = CategorizerModel()
    model.load_from(Path(params.paths.stack) / COMBINER_FILE, {CATALOG_ARTIFACT: tmp_path / "catalog.json"})
    out = model.predict(None, ex)
    assert out["id"].tolist() == ex["sku"].tolist() and (out["status"] == "ok").all()
    assert set(out.columns) >= {f"{lvl}_confidence" for lvl in params.catalog.levels}
