"""Any retailer's catalog (issue 40): the schema in params, the reader at the edge, and every depth-dependent
piece of the system on taxonomies of 1 to 6 levels (synthetic catalogs made here; no training)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from components.catalog import ATTRIBUTES, IMAGE, TITLE, CatalogError, attribute_tokens, read_catalog
from components.config import ConfigError, catalog_from_dict, deep_merge, level_weights, params_from_dict
from tests.conftest import SCHEMA, TINY_OVERRIDES, make_shaped_catalog, shaped_raw, shaped_taxonomy

DEPTHS = [1, 2, 3, 4, 5, 6]


def shaped(tmp_path, depth, **kw):
    data, schema = make_shaped_catalog(tmp_path / "data", depth, **kw)
    return data, catalog_from_dict(schema), schema


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("path_column", [False, True])
def test_the_reader_gives_one_column_per_level_whatever_the_export_calls_them(tmp_path, depth, path_column):
    data, schema, _ = shaped(tmp_path, depth, path_column=path_column, sku=True, image_column=True,
                             attributes=True)
    read = read_catalog(data, schema)
    df = read.frame
    assert not read.problems and len(df) == 150
    assert list(schema.levels) == [f"dept{k}" for k in range(depth)]
    paths = {tuple(r) for r in df[list(schema.levels)].itertuples(index=False)}
    assert paths == set(shaped_taxonomy(depth))
    # the parts under their internal names: id (a SKU kept as text), title, image under its root, attributes
    assert df["id"].iloc[0] == "SKU-00500a" and df[TITLE].iloc[0].startswith(("Nike", "Puma", "Adidas", "Roadster",
                                                                               "Titan", "Fastrack"))
    assert df[IMAGE].iloc[0] == "photos/p_0000.jpg" and (data / df[IMAGE].iloc[0]).is_file()
    assert sorted(attribute_tokens(df[ATTRIBUTES].iloc[0]))[0].startswith("material=")


def test_a_path_of_the_wrong_depth_is_that_row_s_problem_and_ingest_quarantines_it(tmp_path):
    from components.pipeline import ingest

    data, schema, raw_schema = shaped(tmp_path, 3, path_column=True)
    text = (data / "items.csv").read_text().splitlines()
    text[3] = text[3].replace(" > ", " > extra > ", 1)
    (data / "items.csv").write_text("\n".join(text) + "\n")
    read = read_catalog(data, schema)
    bad = [p for p in read.problems if p["field"] == "category_path"]
    assert len(bad) == 1 and bad[0]["row"] == 4 and "4 parts, 3 levels" in bad[0]["reason"]
    params = params_from_dict(shaped_raw(tmp_path, data, raw_schema))
    curated, quarantine = ingest.curate(read, params.ingest, schema)
    assert len(curated) == 149 and any(q["reason"] == "missing_label" and q["row"] == 4 for q in quarantine)


def test_sku_ids_are_checked_and_named_in_the_error(tmp_path):
    data, schema, _ = shaped(tmp_path, 2, sku=True)
    lines = (data / "items.csv").read_text().splitlines()
    lines[2] = "../etc/passwd" + lines[2][lines[2].index(","):]
    lines[3] = lines[1]  # a duplicate SKU
    (data / "items.csv").write_text("\n".join(lines) + "\n")
    read = read_catalog(data, schema)
    reasons = {p["row"]: p["reason"] for p in read.problems}
    assert reasons[3].startswith("bad_id (a SKU is letters, digits") and reasons[4].startswith("duplicate_id")
    assert "../etc/passwd" not in set(read.frame["id"])


def test_the_default_schema_is_the_myntra_export_and_the_served_signature_is_unchanged(catalog):
    from components.config import load_raw
    from components.pipeline.ingest import curate
    from components.serving.mlflow_model import INPUT_COLUMNS, NUMERIC_COLUMNS, example_frame, input_schema
    from tests.conftest import ROOT

    params = params_from_dict(load_raw(ROOT / "params.yaml"))
    read = read_catalog(catalog, SCHEMA)
    df, _ = curate(read, params.ingest, SCHEMA)
    df["has_image"] = [(catalog / p).is_file() for p in df[IMAGE]]
    ex = example_frame(df, catalog, SCHEMA)
    assert list(ex.columns) == INPUT_COLUMNS and ex["id"].dtype == np.int64
    spec = input_schema(SCHEMA, list(ex.columns))
    kinds = {c.name: c.type.name for c in spec.inputs}
    assert kinds == {c: ("long" if c == "id" else "double" if c in NUMERIC_COLUMNS else "string")
                     for c in INPUT_COLUMNS}
    assert [c.name for c in spec.inputs if c.required] == ["id"]


@pytest.mark.parametrize("change, message", [
    ({"levels": []}, "levels: expected one or more"),
    ({"id_type": "uuid"}, "id_type: expected int or string"),
    ({"label_path": {"column": "path", "separator": ""}}, "label_path.separator: required"),
    ({"image": {"column": "", "root": "", "pattern": "images/photo.jpg"}}, "image.pattern: must contain {id}"),
    ({"categorical": ["gender", "productDisplayName"]}, "column 'productDisplayName' is given two parts"),
    ({"allowed": {"nope": ["a"]}}, "allowed: ['nope'] are not columns"),
    ({"files": ["../styles.csv"]}, "files: expected CSV file names"),
    # ingest's own columns: a level called "group" was overwritten by the duplicate grouping (the re-shaped run)
    ({"label_path": {"column": "path", "separator": ">"}, "levels": ["top", "group", "leaf"]},
     "levels: 'group' is a name the pipeline gives a column of its own"),
    ({"numeric": ["price", "split"]}, "numeric: 'split' is a name the pipeline gives a column of its own"),
    ({"categorical": ["gender", "size_confidence"]}, "categorical: 'size_confidence' is a name the pipeline"),
])
def test_a_contradictory_schema_is_refused_naming_the_key(change, message):
    from components.config import load_raw
    from tests.conftest import ROOT

    raw = deep_merge(load_raw(ROOT / "params.yaml"), {"catalog": change})
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(raw)


@pytest.mark.parametrize("change, message", [
    ({"train_fusion": {"train": {"level_weights": [1.0, 1.0]}}}, "2 weights for 3 catalog levels"),
    ({"registry": {"floors": {"department": 0.5}}}, "floors: ['department'] are not catalog levels"),
    ({"drift": {"categorical": ["material"]}}, "watched column(s) ['material']"),
])
def test_other_sections_must_agree_with_the_schema(change, message):
    from components.config import load_raw
    from tests.conftest import ROOT

    raw = deep_merge(load_raw(ROOT / "params.yaml"), change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(raw)


def test_a_column_with_an_internal_name_but_another_part_is_refused(tmp_path):
    data, schema, raw = shaped(tmp_path, 2)
    text = (data / "items.csv").read_text().splitlines()
    text = [ln + (",description" if i == 0 else ",x") for i, ln in enumerate(text)]
    (data / "items.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(CatalogError, match=r"\['description'\] carry a name the system gives a part"):
        read_catalog(data, schema)


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_depth_dependent_piece_follows_the_catalog_s_levels(tmp_path, depth):
    """Encoders, label arrays, model heads, losses, the audit's roll-up, the stack's paths, scores, the gate:
    nothing assumes three levels."""
    from components.encoders import encode_frame, encode_labels, fit_encoders
    from components.lifecycle.registry import decide
    from components.models.fusion import ModelConfig, build_model
    from components.models.losses import hierarchy_similarity, total_loss
    from components.pipeline.audit import parent_given_article
    from components.pipeline.evaluate import score_model
    from components.pipeline.stack import taxonomy_paths
    from components.report import comparison_table, levels_of

    data, schema, raw_schema = shaped(tmp_path, depth, metadata=depth % 2 == 0, attributes=depth > 3)
    params = params_from_dict(shaped_raw(tmp_path, data, raw_schema))
    df = read_catalog(data, schema).frame
    enc = fit_encoders(df, params.features, schema, df)
    assert enc.levels == schema.levels and all(len(p) == depth for p in enc.taxonomy)
    y = encode_labels(df, enc)
    assert y.shape == (len(df), depth) and (y >= 0).all()
    sizes = enc.model_sizes()
    assert len(sizes["n_classes"]) == depth and sizes["n_classes"][-1] == 6
    # the network: one head per level, the losses with the default weights of this depth
    arrays = encode_frame(df.head(8), enc)
    cfg = ModelConfig.from_params(params.model, ("text", "metadata"), **sizes)
    model = build_model(cfg)
    batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
    batch["labels"] = torch.from_numpy(y[:8])
    batch["group"] = torch.arange(8)
    batch["has_image"] = torch.zeros(8, dtype=torch.bool)
    feats = model.forward_features(batch)
    logits = model.fused_logits(feats)
    assert [lg.shape[1] for lg in logits] == list(sizes["n_classes"])
    weights = level_weights(params.train_fusion.train.level_weights, depth)
    assert len(weights) == depth and weights[-1] == 1.0
    loss, _ = total_loss(model, feats, batch, params.train_fusion.train.losses, weights)
    assert torch.isfinite(loss)
    sim = hierarchy_similarity(batch["labels"])
    assert torch.allclose(sim.diagonal(), torch.ones(8)) and float(sim.min()) >= 0
    # the audit's roll-up from the finest level to each parent, the stack's taxonomy paths
    parents = parent_given_article(y, list(sizes["n_classes"]))
    assert len(parents) == depth - 1 and all(np.allclose(m.sum(1), 1.0) for m in parents)
    assert taxonomy_paths(enc).shape == (6, depth)
    # evaluation, the results table and the promotion gate read the levels from the scores
    probs = [np.eye(n)[y[:, k]] for k, n in enumerate(sizes["n_classes"])]
    scores = score_model(probs, y, params.evaluate, 0, {c: "head" for c in range(6)}, enc.levels)
    assert list(scores) == list(schema.levels) and scores[schema.finest]["accuracy"] == 1.0
    table = comparison_table({"fusion": scores, "served_model": "fusion", "test_products": len(y)})
    assert levels_of({"fusion": scores}) == schema.levels and f"| {schema.finest} acc |" in table
    assert "DeepFusion published" not in table  # those figures belong to the Myntra taxonomy
    f1 = {lvl: s["macro_f1"] for lvl, s in scores.items()}
    assert decide(f1, None, True, params.registry).promote
    worse = {**f1, schema.finest: f1[schema.finest] - 0.5}
    assert not decide(worse, f1, True, params.registry).promote


@pytest.mark.parametrize("depth", DEPTHS)
def test_drift_signals_and_the_review_queue_name_the_catalog_s_own_levels(depth):
    from components.monitoring import drift_signals as sig
    from components.orchestration.landing import review_queue

    levels = tuple(f"dept{k}" for k in range(depth))
    signals = sig.Signals(("colour",), ("cost",), levels)
    assert signals.categorical == ["colour", *dict.fromkeys((f"pred_{levels[0]}", f"pred_{levels[-1]}"))]
    assert signals.unseen == f"unseen_{levels[-1]}"
    pred = pd.DataFrame({"id": ["a", "b"], levels[-1]: ["Jeans", "Shirts"], f"{levels[-1]}_confidence": [0.999, 0.2],
                         "status": ["ok", "ok"]})
    labels = pd.DataFrame({"id": ["a", "b"], levels[-1]: ["Tshirts", "Shirts"]})
    q = review_queue(pred, labels, 0.99, levels[-1]).set_index("id")
    assert q.loc["a", "review_reason"] == "suspected_mislabel" and q.loc["b", "review_reason"] == "low_confidence"


def test_a_served_row_gets_the_attributes_training_read(tmp_path):
    """One plain attribute column: the served model's rows (export names) become what the reader gave training."""
    from components.catalog import to_internal

    data, _, raw = shaped(tmp_path, 2, attributes=True)
    schema = catalog_from_dict({**raw, "attributes": ["material"]})
    trained = read_catalog(data, schema).frame
    served = to_internal(pd.read_csv(data / "items.csv", dtype=str, keep_default_na=False), schema)
    assert served[ATTRIBUTES].tolist() == trained[ATTRIBUTES].tolist()
    assert attribute_tokens(served[ATTRIBUTES].iloc[0])[0].startswith("material=")


def test_plain_attribute_columns_become_tokens_and_one_json_column_passes_through():
    from components.catalog import attributes_json

    assert attributes_json({"articleAttributes": '{"Fit": "Slim"}'}) == '{"Fit": "Slim"}'
    assert attributes_json({"articleAttributes": "NA"}) == "NA"  # as before: no tokens
    merged = attributes_json({"material": "Cotton", "pattern": "NA", "extra": '{"Neck": "Round"}'})
    assert sorted(attribute_tokens(merged)) == ["material=cotton", "neck=round"]


def test_tiny_overrides_stay_valid_for_the_default_schema():
    from components.config import load_raw
    from tests.conftest import ROOT

    params_from_dict(deep_merge(load_raw(ROOT / "params.yaml"), TINY_OVERRIDES))


def test_inspect_proposes_our_export_s_schema(catalog, tmp_path):
    from components.catalog_inspect import main, propose

    schema, notes = propose(catalog)
    assert schema["files"] == ["styles.csv", "products.csv"] and schema["id"] == "id" and schema["id_type"] == "int"
    assert schema["title"] == "productDisplayName" and schema["levels"] == ["masterCategory", "subCategory",
                                                                          "articleType"]
    assert schema["image"] == {"column": "image", "root": "", "pattern": ""} and schema["added"] == "catalogAddDate"
    assert set(schema["numeric"]) == {"year", "price", "discountedPrice"}
    assert schema["attributes"] == ["articleAttributes"]
    assert {"gender", "baseColour", "season", "usage", "brandName"} <= set(schema["categorical"])
    # the proposal is a valid schema that reads the export
    assert len(read_catalog(catalog, catalog_from_dict(schema)).frame) == 120
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\ncatalog:\n  id: old\n  levels: [x]\ningest:\n  limit: 0\n")
    assert main(["inspect", str(catalog), "--write", str(params)]) == 0
    import yaml
    written = yaml.safe_load(params.read_text())
    assert written["seed"] == 1 and written["ingest"] == {"limit": 0} and written["catalog"]["id"] == "id"


@pytest.mark.parametrize("path_column", [False, True])
def test_inspect_finds_another_retailer_s_parts(tmp_path, path_column):
    from components.catalog_inspect import propose

    data, truth, _ = shaped(tmp_path, 4, path_column=path_column, sku=True, image_column=True, attributes=True)
    schema, notes = propose(data)
    assert schema["id"] == "sku" and schema["id_type"] == "string" and schema["title"] == "name"
    assert schema["image"] == {"column": "image_file", "root": "photos", "pattern": ""}
    if path_column:
        assert schema["label_path"] == {"column": "category_path", "separator": " > "} and len(schema["levels"]) == 4
    else:
        assert schema["levels"] == ["dept0", "dept1", "dept2", "dept3"]
    assert "cost" in schema["numeric"] and {"colour", "fit"} <= set(schema["categorical"])
    read = read_catalog(data, catalog_from_dict(schema))
    assert len(read.frame) == 150 and not read.problems


def test_inspect_without_images_falls_back_to_files_named_by_id(tmp_path):
    from components.catalog_inspect import propose

    data, truth, _ = shaped(tmp_path, 2)
    schema, notes = propose(data)
    assert schema["image"] == {"column": "", "root": "", "pattern": "pics/{id}.jpg"}


@pytest.mark.parametrize("ids", [["7", "8", "9"], ["MY-7", "MY-8", "sku_9"]])
def test_audit_suspects_and_exclusions_work_for_numbers_and_skus(tmp_path, ids):
    """The re-shaped real run stopped in evaluate: the audit's suspects were read back as int64."""
    from components.data import EXCLUDE_FILE, SPLIT_CODES, excluded_ids, training_split
    from components.pipeline.evaluate import audit_suspects, slices

    pd.DataFrame({"id": ids, "suspect": [True, False, True]}).to_csv(tmp_path / "audit.csv", index=False)
    pd.DataFrame({"id": ids[:1]}).to_csv(tmp_path / EXCLUDE_FILE, index=False)
    typed = [int(i) for i in ids] if ids[0].isdigit() else ids  # the product table keeps int ids as int64
    frame = pd.DataFrame({"id": typed, "has_image": True, "productDisplayName": "a b", "articleType": "x"})
    assert list(audit_suspects(tmp_path)) == [ids[0], ids[2]]
    mask = slices(frame, np.zeros((3, 1), int), {0: "head"}, audit_suspects(tmp_path))
    assert mask["label not suspected by the audit"].tolist() == [False, True, False]
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    frame.to_parquet(ingest / "products.parquet")
    split = np.array([SPLIT_CODES["train"]] * 3)
    assert list(excluded_ids(tmp_path)) == ids[:1]
    assert (training_split(split, ingest, tmp_path) != split).tolist() == [True, False, False]
