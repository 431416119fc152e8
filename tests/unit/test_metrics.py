"""Every metric against a case computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from components import metrics as M


def test_classification_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    r = M.classification(y, p)
    assert r["accuracy"] == 0.75
    # class 0: P=1, R=0.5, F1=2/3; class 1: P=2/3, R=1, F1=0.8
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert r["weighted_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # equal supports


def test_bootstrap_ci_brackets_the_point_estimate_and_collapses_when_perfect():
    y = np.arange(50) % 5
    ci = M.bootstrap_ci(y, y, n=50, seed=0)
    assert ci["accuracy"] == (1.0, 1.0)
    p = y.copy()
    p[:10] = (p[:10] + 1) % 5
    ci = M.bootstrap_ci(y, p, n=200, seed=0)
    assert ci["accuracy"][0] < 0.8 < ci["accuracy"][1]


def test_paired_difference_ci_is_of_the_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    a = y.copy()
    b = y.copy()
    b[:40] = (y[:40] + 1) % 4  # b is wrong on 40 rows a gets right: a leads by exactly 10 points
    d = M.paired_bootstrap_diff(y, a, b, 200, seed=0)
    assert d["accuracy"]["diff"] == pytest.approx(0.10)
    assert 0.0 < d["accuracy"]["ci_low"] < 0.10 < d["accuracy"]["ci_high"] < 0.2
    assert d["macro_f1"]["diff"] > 0 and d["macro_f1"]["ci_low"] > 0
    same = M.paired_bootstrap_diff(y, b, b, 50, seed=0)  # a model against itself: zero, with no spread
    assert same["accuracy"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # Two models wrong on different rows, equally often: the CI of the difference spans zero.
    c = y.copy()
    c[200:240] = (y[200:240] + 1) % 4
    tie = M.paired_bootstrap_diff(y, b, c, 200, seed=0)
    assert tie["accuracy"]["diff"] == 0.0 and tie["accuracy"]["ci_low"] < 0 < tie["accuracy"]["ci_high"]


def test_paired_macro_f1_over_the_truth_classes_does_not_charge_a_class_only_one_model_predicts():
    y = np.repeat(np.arange(10), 10)
    a, b = y.copy(), y.copy()
    a[0], b[1] = 10, 2  # one error each on class 0: a into a class no row holds, b into class 2
    d = M.paired_bootstrap_diff(y, a, b, 20, seed=0)
    assert d["accuracy"]["diff"] == 0.0
    # sklearn's default averages a over 11 classes (class 10 scores 0) and b over 10: a loses ~9 points.
    assert d["macro_f1"]["diff"] < -0.08
    # Over the ten classes of the truth both lose one recall of class 0; b also one precision of class 2.
    assert abs(d["macro_f1_truth_classes"]["diff"]) < 0.01


def test_bands_and_band_f1():
    bands = M.frequency_bands({0: 600, 1: 150, 2: 10}, head=500, tail=100)
    assert bands == {0: "head", 1: "torso", 2: "tail"}
    y, p = np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1])
    f = M.band_f1(y, p, bands)
    assert f == {"head": 1.0, "torso": pytest.approx(2 / 3), "tail": 0.0}


def test_ece_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1], dtype=bool)
    # bin (0.8,0.9]: acc 0.5 vs conf 0.9 -> 0.4 * 0.5 weight; bin (0.5,0.6]: acc 1 vs 0.6 -> 0.4 * 0.5
    assert M.expected_calibration_error(conf, correct, bins=10) == pytest.approx(0.4)


def test_coverage_at_precision_by_hand():
    conf = np.array([0.99, 0.98, 0.97, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 1], dtype=bool)
    r = M.coverage_at_precision(conf, correct, 0.99)
    assert r["coverage"] == 0.6 and r["threshold"] == 0.97 and r["review_per_10k"] == 4000
    r = M.coverage_at_precision(conf, correct, 0.8)
    assert r["coverage"] == 1.0  # 4/5 correct overall
    assert M.coverage_at_precision(conf, ~correct, 0.99)["coverage"] == 0.0


def test_hierarchy_consistency():
    tax = {("A", "a", "x"), ("A", "b", "y")}
    assert M.hierarchy_consistency([("A", "a", "x"), ("A", "a", "y")], tax) == 0.5


def test_retrieval_with_several_correct_items():
    items = np.eye(4)
    queries = np.array([[1.0, 0, 0, 0], [0, 0.1, 0.9, 0], [0, 0, 0, 1.0]])
    rel = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    r = M.retrieval(queries, items, rel, (1, 2))
    # q0 rank 1; q1 relevant item 1 scores 0.1 < 0.9 -> rank 2; q2 item 3 (relevant) ranks first.
    assert r["recall_at_1"] == pytest.approx(2 / 3) and r["recall_at_2"] == 1.0
    assert r["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_relevance_identical_title_or_image():
    rel = M.relevance(np.array(["a", "a", "b", "c"]), np.array(["m1", "m2", "m2", ""]))
    assert rel[0, 1] and rel[1, 2] and not rel[0, 2] and not rel[3, 0] and rel[3, 3]


def test_key_retrieval_counts_hits_recall_and_the_first_relevant_rank():
    """KAGL-style: relevance = the same key. Gallery on a circle; query 0 (key "a") has its two relevant items at
    ranks 1 and 3, query 1 (key "b") its one at rank 3, query 2's key is nowhere in the gallery (not counted)."""
    angles = np.deg2rad([0, 10, 20, 30, 200])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    keys = np.array(["a", "b", "a", "c", "d"])
    queries = np.stack([gallery[0], [np.cos(np.deg2rad(31)), np.sin(np.deg2rad(31))], gallery[4]])
    r = M.key_retrieval(queries, gallery, np.array(["a", "b", "zzz"]), keys, (1, 2, 3), chunk=2)
    assert r["queries"] == 2
    assert r["hit_at_1"] == 0.5 and r["hit_at_2"] == 0.5 and r["hit_at_3"] == 1.0
    # query 0: top-2 = {0 (a), 1 (b)} -> 1 of 2 relevant; query 1 (at 31 deg): top-3 = {3 (c), 2 (a), 1 (b)}
    assert r["recall_at_2"] == pytest.approx((0.5 + 0.0) / 2) and r["recall_at_3"] == pytest.approx((1.0 + 1.0) / 2)
    assert r["mrr"] == pytest.approx((1.0 + 1 / 3) / 2)
