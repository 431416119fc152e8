"""Planted label flips: the shares asked for, sibling flips stay in their subCategory, parents follow."""
from __future__ import annotations

import pandas as pd

from components.label_noise import plant_label_flips

TAXONOMY = [("Apparel", "Topwear", "Tshirts"), ("Apparel", "Topwear", "Shirts"), ("Apparel", "Bottomwear", "Jeans"),
            ("Footwear", "Shoes", "Casual Shoes"), ("Footwear", "Shoes", "Sports Shoes")]


def test_flips_are_counted_and_consistent():
    df = pd.DataFrame([dict(zip(("masterCategory", "subCategory", "articleType"), TAXONOMY[i % 5]), id=i)
                       for i in range(500)])
    out = plant_label_flips(df, 0.04, 0.02, seed=3)
    assert (out["noise"] == "sibling").sum() == 20 and (out["noise"] == "random").sum() == 10
    path = {t[2]: t[:2] for t in TAXONOMY}
    assert all(path[r.articleType] == (r.masterCategory, r.subCategory) for r in out.itertuples())
    flipped = out["noise"] != ""
    assert (out.loc[flipped, "articleType"] != df.loc[flipped, "articleType"]).all()
    assert (out.loc[~flipped, "articleType"] == df.loc[~flipped, "articleType"]).all()
    sib = out["noise"] == "sibling"
    assert (out.loc[sib, "subCategory"] == df.loc[sib, "subCategory"]).all()
    assert df.equals(df.copy()) and "noise" not in df  # the input is left alone
