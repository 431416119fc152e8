"""Catalog audit: cross-fitting never lets a product's own label (or its group's) reach the model that
scores it, planted mislabels are found, unlabelled input gets a clear message, the page renders."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.pipeline import audit, features, ingest
from components.training.crossfit import group_folds, out_of_fold


def test_folds_keep_groups_together_and_are_balanced():
    groups = np.repeat(np.arange(300), np.random.default_rng(0).integers(1, 4, 300))
    folds = group_folds(groups, 5, seed=3)
    assert all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 3
    assert np.array_equal(folds, group_folds(groups, 5, seed=3))  # seeded: the same folds every run
    with pytest.raises(ValueError, match="cannot fill"):
        group_folds(np.array([1, 1, 2]), 5, seed=0)


def test_a_product_is_never_scored_by_a_model_that_saw_its_group():
    groups = np.repeat(np.arange(40), 3)
    folds = group_folds(groups, 4, seed=0)
    seen_by_model_scoring: dict[int, set[int]] = {}

    def fit_predict(train, held):
        for i in held:
            seen_by_model_scoring[int(i)] = set(groups[train].tolist())
        return [np.full((len(held), 2), 0.5)]

    probs = out_of_fold(folds, [2], fit_predict)
    assert probs[0].shape == (120, 2) and len(seen_by_model_scoring) == 120
    assert all(groups[i] not in seen for i, seen in seen_by_model_scoring.items())


@pytest.fixture
def curated(tmp_path):
    from components.config import params_from_dict
    from tests.conftest import make_catalog, tiny_raw

    data = make_catalog(tmp_path / "data", n=300, seed=4)
    # 200 training rows per fold: the tiny model needs more epochs and a stronger penalty than the catalog.
    params = params_from_dict(tiny_raw(tmp_path, data, {"audit": {"folds": 3, "epochs": 20, "sgd_alpha": 1.0e-4}}))
    ingest.run(params)
    features.run(params)
    return params


def planted(params, n_flips: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    rng = np.random.default_rng(0)
    flips = rng.choice(len(df), n_flips, replace=False)
    # Tshirts <-> Shirts and Casual <-> Sports Shoes: plausible siblings (same subCategory), as real mislabels are.
    sibling = {"Tshirts": "Shirts", "Shirts": "Tshirts", "Casual Shoes": "Sports Shoes",
               "Sports Shoes": "Casual Shoes", "Jeans": "Tshirts", "Watches": "Casual Shoes"}
    parents = df.drop_duplicates("articleType").set_index("articleType")[["masterCategory", "subCategory"]]
    for i in flips:
        new = sibling[df.at[i, "articleType"]]
        df.loc[i, ["articleType", "masterCategory", "subCategory"]] = [new, *parents.loc[new]]
    return df, df["id"].to_numpy()[flips]


def images_of(params) -> np.ndarray:
    return np.load(Path(params.paths.ingest) / "images.npy")


def test_planted_flips_are_ranked_first(curated):
    from components.encoders import load_encoders

    df, flipped = planted(curated)
    enc = load_encoders(curated.paths.features)
    res = audit.audit_products(df, images_of(curated), enc, curated.audit, curated.train_baseline.tfidf,
                               curated.catalog.categorical, curated.seed)
    top = set(res.table["id"].head(2 * len(flipped)))  # 12 of 300 products
    assert top >= set(flipped)
    hit = res.table[res.table["id"].isin(flipped)]
    assert hit["suspect"].all() and (hit["disagreeing_experts"].str.contains("text")).all()
    assert res.oof["text"][2].shape == (len(df), len(enc.labels["articleType"]))
    # One score orders the queue and draws its cut-off: no product outside it is less trusted than one inside.
    table = res.table
    most_trusted_suspect = table.loc[table["suspect"], "label_quality"].max()
    assert not ((~table["suspect"]) & (table["label_quality"] < most_trusted_suspect)).any()
    assert (hit["reason"].str.contains("text says")).all()


def test_a_photo_of_another_class_makes_its_listing_a_suspect(curated):
    """Title and label agree, the photo shows something else: only the image witness can see it."""
    from components.encoders import load_encoders
    from components.label_noise import plant_image_swaps

    df = pd.read_parquet(Path(curated.paths.ingest) / "products.parquet")
    swapped, pixels = plant_image_swaps(df, images_of(curated), 0.02, seed=1)
    ids = set(swapped.loc[swapped["noise"] == "image", "id"])
    assert len(ids) == 6
    enc = load_encoders(curated.paths.features)
    args = (enc, curated.audit, curated.train_baseline.tfidf, curated.catalog.categorical, curated.seed)
    res = audit.audit_products(df, pixels, *args)
    ranked = res.table["id"].tolist()
    assert set(ranked[:12]) >= ids, res.table.head(12)[["id", "label_quality", "reason"]]  # 12 of 300 products
    hit = res.table[res.table["id"].isin(ids)]
    # Their labels are right (title and label agree), so they are not counted as mislabels; the photo is what
    # the reviewer sees named, among the least trusted listings.
    assert hit["reason"].str.contains("image says").all() and not hit["reason"].str.contains("text says").any()
    # Without the image witness the same listings look clean: the photo was the only evidence.
    import dataclasses
    blind = audit.audit_products(df, pixels, enc, dataclasses.replace(curated.audit, image_weight=0.0), *args[2:])
    assert not set(blind.table["id"].head(12)) & ids
    assert "image" not in blind.oof


def test_pooling_lets_a_sure_witness_veto_and_an_absent_one_abstain():
    sure_no = [np.array([[0.0, 1.0], [np.nan, np.nan]], np.float32)]
    agree = [np.array([[0.95, 0.05], [0.95, 0.05]], np.float32)]
    p = audit.pooled({"text": agree, "image": sure_no}, {"text": 0.75, "image": 0.25})[0]
    # row 0: the text is 95 % sure of class 0, the photo sure it is not: class 0 falls below what a mixture
    # (0.75 x 0.95 = 0.71) leaves it, where the photo's certainty would count for no more than its weight
    assert p[0, 0] < 0.65
    np.testing.assert_allclose(p[1], [0.95, 0.05], atol=1e-5)  # row 1 has no photo: the text alone
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)


def test_unlabelled_products_get_a_clear_message(curated):
    from components.encoders import load_encoders

    df = pd.read_parquet(Path(curated.paths.ingest) / "products.parquet")
    df["articleType"] = ""
    with pytest.raises(audit.AuditError, match="no articleType labels"):
        audit.audit_products(df, images_of(curated), load_encoders(curated.paths.features), curated.audit,
                             curated.train_baseline.tfidf, curated.catalog.categorical, curated.seed)


class Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows, self.images = 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows += 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_stage_writes_csv_page_oof_and_metrics(curated):
    metrics = audit.run(curated)
    out = Path(curated.paths.audit)
    table = pd.read_csv(out / "audit.csv")
    assert len(table) == metrics["products"] and table["id"].is_unique
    assert list(table["suspect"]) == sorted(table["suspect"], reverse=True)  # suspects first
    page = Rows()
    page.feed((out / "audit.html").read_text())
    assert page.rows == 1 + min(metrics["suspects"], curated.audit.html_rows)  # header + one per suspect
    assert all(src.startswith("data:image/png;base64,") for src in page.images)  # self-contained
    oof = np.load(out / "oof.npz")
    assert oof["text_articleType"].shape[0] == len(table)
    np.testing.assert_allclose(oof["text_articleType"].sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(oof["pooled_articleType"].sum(1), 1.0, atol=1e-4)
    assert np.isnan(oof["image_articleType"]).any(axis=1).sum() == (~pd.read_parquet(
        Path(curated.paths.ingest) / "products.parquet")["has_image"]).sum()  # no photo: the probe abstains
    assert pd.read_csv(out / "exclude.csv").empty and metrics["excluded_from_training"] == 0  # option off


def test_exclude_from_training_drops_only_train_suspects(curated):
    import dataclasses

    from components.data import SPLIT_CODES, load_arrays, split_arrays, training_split

    on = dataclasses.replace(curated, audit=dataclasses.replace(curated.audit, exclude_from_training=True))
    flipped, _ = planted(curated, n_flips=12)  # the synthetic catalog's own labels are clean
    flipped.to_parquet(Path(curated.paths.ingest) / "products.parquet")
    metrics = audit.run(on)
    out = Path(curated.paths.audit)
    table, excluded = pd.read_csv(out / "audit.csv"), pd.read_csv(out / "exclude.csv")
    df = pd.read_parquet(Path(curated.paths.ingest) / "products.parquet")
    train_ids = set(df.loc[df["split"] == "train", "id"])
    expected = set(table.loc[table["suspect"], "id"]) & train_ids
    assert expected and set(excluded["id"]) == expected and metrics["excluded_from_training"] == len(expected)
    arrays, split = load_arrays(curated.paths.ingest, curated.paths.features)
    cleaned = training_split(split, curated.paths.ingest, curated.paths.audit)
    parts, before = split_arrays(arrays, cleaned), split_arrays(arrays, split)
    assert len(parts["train"]) == len(before["train"]) - len(expected)
    assert len(parts["val"]) == len(before["val"]) and len(parts["test"]) == len(before["test"])  # judged as is
    ids = df["id"].to_numpy()
    assert not set(ids[cleaned == SPLIT_CODES["train"]]) & expected
