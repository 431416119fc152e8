from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import params_from_dict
from components.pipeline import ingest
from tests.conftest import make_catalog, tiny_raw


def test_ingest_curates_quarantines_and_caches(tiny_params):
    report = ingest.run(tiny_params)
    out = tiny_params.paths.ingest
    df = pd.read_parquet(f"{out}/products.parquet")
    cache = np.load(f"{out}/images.npy", mmap_mode="r")
    q = pd.read_csv(f"{out}/quarantine.csv")
    assert cache.shape == (len(df), 80, 64, 3) and cache.dtype == np.uint8
    # Every input row is curated or quarantined; corrupt images are quarantined, their rows kept.
    assert len(df) == 120 and report["summary"]["rows_in"] == 120
    assert (df["image_status"] == "no_image").sum() == 4
    assert (df["image_status"] == "corrupt_image").sum() == 2
    assert set(q.loc[q["field"] == "image", "id"]) == {1119, 1118}
    assert all(q.loc[q["field"] == "image", "reason"].str.startswith("corrupt_image"))
    # The cache row of a product with an image holds its pixels (not the zero fill).
    assert cache[df.index[df["has_image"]][0]].max() > 0
    assert not cache[df.index[~df["has_image"]][0]].any()
    # No product group straddles splits.
    assert (df.groupby("group")["split"].nunique() == 1).all()


def test_excluded_and_unlabeled_rows_are_quarantined(tmp_path):
    data = make_catalog(tmp_path / "data", n=30)
    lines = (data / "styles.csv").read_text().splitlines()
    lines[1] = lines[1].replace("Apparel,Topwear,Tshirts", "Free Items,Free Gifts,Tshirts")
    lines[2] = lines[2].replace("Apparel,Topwear,Shirts", "Apparel,Topwear,")
    lines[3] = lines[3].replace("Apparel,Bottomwear,Jeans", "Gadgets,Phones,Phones")
    (data / "styles.csv").write_text("\n".join(lines) + "\n")
    params = params_from_dict(tiny_raw(tmp_path, data))
    ingest.run(params)
    q = pd.read_csv(f"{params.paths.ingest}/quarantine.csv")
    reasons = dict(zip(q["id"], q["reason"]))
    assert reasons[1000].startswith("excluded_master_category")
    assert reasons[1001] == "missing_label"
    assert reasons[1002].startswith("unknown_masterCategory")
    assert len(pd.read_parquet(f"{params.paths.ingest}/products.parquet")) == 27


def test_split_is_stable_when_the_catalog_grows(tmp_path):
    small = make_catalog(tmp_path / "a", n=60, corrupt_images=0)
    big = make_catalog(tmp_path / "b", n=90, corrupt_images=0)
    splits = []
    for name, data in (("a", small), ("b", big)):
        p = params_from_dict(tiny_raw(tmp_path / name, data))
        ingest.run(p)
        splits.append(pd.read_parquet(f"{p.paths.ingest}/products.parquet").set_index("id")["split"])
    common = splits[0].index
    assert (splits[0] == splits[1].loc[common]).all()


def test_grouping_links_same_image_and_same_title():
    titles = ["a shirt", "b shirt", "a shirt", "c", "d"]
    md5s = ["m1", "m2", "m3", "m2", "m5"]
    groups = ingest.group_products(titles, md5s, [None] * 5, perceptual_max_group=2)
    assert groups[0] == groups[2]  # same title
    assert groups[1] == groups[3]  # same image bytes
    assert len(set(groups)) == 3


def test_perceptual_hash_shared_by_many_is_ignored():
    groups = ingest.group_products(["a", "b", "c", "d"], ["", "", "", ""], [7, 7, 7, 9], perceptual_max_group=2)
    assert len(set(groups)) == 4


def test_rare_classes_collapse():
    s = pd.Series(["a"] * 5 + ["b"] * 2)
    assert ingest.collapse_rare(s, 3, "Other").tolist() == ["a"] * 5 + ["Other"] * 2


def test_failed_ingest_leaves_previous_outputs_untouched(tiny_params, monkeypatch):
    ingest.run(tiny_params)
    before = Path(tiny_params.paths.ingest) / "products.parquet"
    mtime = os.path.getmtime(before)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest, "build_report", boom)
    with pytest.raises(RuntimeError):
        ingest.run(tiny_params)
    assert os.path.getmtime(before) == mtime
    leftovers = [p.name for p in Path(tiny_params.paths.ingest).parent.iterdir()
                 if ".tmp-" in p.name]
    assert leftovers == []
