"""`deepfusion report` (generated README/docs blocks) and `deepfusion audit` (the suspects list) on small data."""
from __future__ import annotations

import pandas as pd
import pytest

from components import results, suspects

METRICS = {"served_model": "stacked", "test_products": 10,
           "inputs": {"full": {"tfidf": {"accuracy": 0.9, "macro_f1": 0.8}, "stacked": {"accuracy": 0.95,
                                                                                          "macro_f1": 0.85}},
                      "no_image": {"tfidf": {"accuracy": 0.9, "macro_f1": 0.8}}}}


def test_report_rewrites_only_its_blocks(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Title\n<!-- headline:start -->\nold\n<!-- headline:end -->\ntail\n")
    (tmp_path / "docs" / "evaluation.md").write_text("x\n<!-- results:start -->\nOLD TABLE\n<!-- results:end -->\n")
    results.write(tmp_path, {**METRICS, "stacked": {lvl: {"accuracy": 0.9, "macro_f1": 0.8, "weighted_f1": 0.9}
                                                    for lvl in ("articleType", "subCategory", "masterCategory")}})
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# Title\n") and readme.endswith("tail\n") and "old" not in readme
    assert "| full | 90.0 / 80.0 | 95.0 / 85.0 |" in readme and "| no_image | 90.0 / 80.0 | – |" in readme
    page = (tmp_path / "docs" / "evaluation.md").read_text()
    assert "Test split: 10 products" in page and "OLD TABLE" not in page


def test_report_refuses_a_file_without_markers(tmp_path):
    with pytest.raises(SystemExit, match="markers"):
        results.replace_block("no markers here", "headline", "x", "README.md")


def test_suspects_keep_the_audit_order_and_filter_by_level(tmp_path, capsys):
    table = pd.DataFrame({"id": ["7", "3", "9", "1"], "suspect": [True, True, True, False],
                          "suspect_levels": ["articleType", "subCategory,articleType", "subCategory", ""],
                          "label_quality": [0.01, 0.02, 0.05, 0.9], "title": ["a", "b", "c", "d"],
                          "current_articleType": ["Belts"] * 4, "suggested_articleType": ["Tshirts"] * 4})
    assert suspects.suspects(table)["id"].tolist() == ["7", "3", "9"]
    assert suspects.suspects(table, "articleType")["id"].tolist() == ["7", "3"]
    (tmp_path / "audit").mkdir()
    table.to_csv(tmp_path / "audit" / "audit.csv", index=False)
    out = tmp_path / "s.csv"
    assert suspects.main(["--audit", str(tmp_path / "audit"), "--top", "1", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("7  Belts -> Tshirts") and "3 suspects of 4 products" in printed
    assert pd.read_csv(out)["id"].tolist() == [7, 3, 9]
    assert suspects.main(["--audit", str(tmp_path / "none")]) == 2
    assert "dvc repro audit" in capsys.readouterr().err
