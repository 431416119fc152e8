"""The search index without a model: exact ranking, the photo/title merge, filters, storage (issue 43)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.serving.search import (
    ExactBackend,
    Index,
    SearchIndexError,
    VectorSearch,
    filter_mask,
    parse_where,
    unit,
)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int = 300, d: int = 16, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    image = unit_rows(rng.normal(size=(n, d)))
    image[::7] = np.nan  # every 7th product has no photo
    text = unit_rows(rng.normal(size=(n, d)))
    facets = pd.DataFrame({"articleType": rng.choice(["Tshirts", "Casual Shoes", "Watches"], n),
                           "baseColour": rng.choice(["Red", "Blue", ""], n)})
    return Index(np.arange(1000, 1000 + n), image, text, facets, "k" * 16)


def brute_force(index: Index, q: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    s = np.maximum(np.nan_to_num(index.image @ q, nan=-np.inf), index.text @ q)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    return np.argsort(-s, kind="stable")


@pytest.mark.parametrize("filters", [{}, {"articleType": ["Watches"]}, {"articleType": ["tshirts", "Watches"],
                                                                        "baseColour": ["red"]}])
def test_merging_the_photo_and_title_lists_is_the_exact_top_k(filters):
    index = synthetic()
    vs = VectorSearch(index)
    mask = filter_mask(index.facets, filters)
    for seed in range(20):
        q = unit(np.random.default_rng(100 + seed).normal(size=16))
        hits = vs.search(q, 10, filters)
        want = brute_force(index, q, mask)[:10]
        assert hits["id"].tolist() == index.ids[want].tolist()
        if filters:
            assert hits["articleType"].str.lower().isin([v.lower() for v in filters["articleType"]]).all()


def test_products_without_a_photo_are_found_by_title_only():
    index = synthetic()
    vs = VectorSearch(index)
    hits = vs.search(index.text[7], 1)  # product 7 has no photo: its own title finds it
    assert hits["id"].tolist() == [1007] and hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert ExactBackend(index.image).rows.size == 300 - len(range(0, 300, 7))


def test_more_like_a_product_leaves_the_product_out():
    index = synthetic()
    vs = VectorSearch(index)
    hits = vs.search(vs.like("1003"), 5, exclude=("1003",))
    assert len(hits) == 5 and "1003" not in hits["id"].astype(str).tolist()
    with pytest.raises(ValueError, match="not in the search index"):
        vs.like("999999")


def test_filters_name_what_exists_when_they_match_nothing():
    index = synthetic()
    with pytest.raises(ValueError, match="not a filterable column; use one of articleType, baseColour"):
        filter_mask(index.facets, {"colour": ["Red"]})
    with pytest.raises(ValueError, match="did you mean Watches"):
        filter_mask(index.facets, {"articleType": ["Watchs"]})
    assert parse_where(["articleType=Casual Shoes", "baseColour=Red, Blue", "articleType=Watches"]) == {
        "articleType": ["Casual Shoes", "Watches"], "baseColour": ["Red", "Blue"]}
    for bad in ("articleType", "=Red", "baseColour="):
        with pytest.raises(ValueError, match="expected COLUMN=VALUE"):
            parse_where([bad])


def test_a_filter_nobody_passes_with_a_k_larger_than_the_matches():
    index = synthetic()
    only = index.facets.index[(index.facets["articleType"] == "Watches") & (index.facets["baseColour"] == "Red")]
    hits = VectorSearch(index).search(unit(np.ones(16)), 1000, {"articleType": ["Watches"], "baseColour": ["Red"]})
    assert sorted(hits["id"]) == sorted(index.ids[only])


def test_the_index_round_trips_and_refuses_other_files(tmp_path):
    index = synthetic()
    index.ids = np.array([f"SKU-{i}" for i in range(300)])  # SKU ids stay text
    index.save(tmp_path / "i.npz")
    back = Index.load(tmp_path / "i.npz")
    assert back.ids.tolist() == index.ids.tolist() and back.model_key == "k" * 16
    np.testing.assert_array_equal(back.image, index.image)
    pd.testing.assert_frame_equal(back.facets, index.facets)
    with pytest.raises(SearchIndexError, match="no search index for this model"):
        Index.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    with pytest.raises(SearchIndexError, match="not a readable search index"):
        Index.load(tmp_path / "bad.npz")
    short = synthetic()
    short.ids = short.ids[-37:]  # as predict once wrote them: the last chunk's ids for every chunk's vectors
    short.save(tmp_path / "short.npz")
    with pytest.raises(SearchIndexError, match=r"different lengths \[37, 300\].*rebuild it"):
        Index.load(tmp_path / "short.npz")
    np.savez(tmp_path / "pickled.npz", ids=np.array([{"x": 1}], dtype=object))
    with pytest.raises(SearchIndexError, match="rebuild it"):
        Index.load(tmp_path / "pickled.npz")
    index.backend = "faiss"
    with pytest.raises(SearchIndexError, match="not installed here"):
        VectorSearch(index)
