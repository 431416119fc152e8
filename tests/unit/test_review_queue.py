"""The categorize DAG's review queue: why each product is there, suspected mislabels for labelled batches."""
from __future__ import annotations

import pandas as pd

from components.orchestration.landing import review_queue


def test_review_reasons():
    pred = pd.DataFrame({"id": [1, 2, 3, 4, 5, 6],
                         "articleType": ["Tshirts", "Shirts", "Jeans", "Watches", "Jeans", ""],
                         "articleType_confidence": [0.999, 0.6, 0.995, 0.999, 0.999, None],
                         "status": ["ok", "ok", "ok", "no_image", "corrupt_image", "rejected: bad id (row 7)"]})
    labels = pd.DataFrame({"id": [1, 2, 3, 4, 5], "articleType": ["Tshirts", "Tshirts", "Shorts", "", "Jeans"]})
    q = review_queue(pred, labels, threshold=0.99, finest="articleType").set_index("id")
    assert q["review_reason"].to_dict() == {2: "low_confidence", 3: "suspected_mislabel", 5: "unreadable",
                                            6: "unreadable"}
    assert q.loc[3, "current_articleType"] == "Shorts" and q.loc[3, "articleType"] == "Jeans"  # the suggestion


def test_unlabelled_batch_has_no_mislabel_suspects():
    pred = pd.DataFrame({"id": [1, 2], "articleType": ["Tshirts", "Jeans"], "articleType_confidence": [0.999, 0.5],
                         "status": ["ok", "ok"]})
    q = review_queue(pred, pd.DataFrame({"id": [], "articleType": []}), threshold=0.99, finest="articleType")
    assert q["review_reason"].tolist() == ["low_confidence"]


def test_the_auto_accept_cut_off_is_the_served_model_s():
    from components.lifecycle.registry import auto_accept_threshold

    evaluation = {"served_model": "stacked", "stacked": {"business": {"threshold_at_0.99": 0.42}},
                  "fusion": {"business": {"threshold_at_0.99": 0.9}}}
    assert auto_accept_threshold(evaluation) == 0.42
    assert auto_accept_threshold({"fusion": {"business": {"threshold_at_0.99": 0.9}}}) == 0.9  # before the stack
    assert auto_accept_threshold({}) == 0.99
