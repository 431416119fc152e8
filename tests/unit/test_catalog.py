from __future__ import annotations

import pytest

from components.catalog import CatalogError, read_catalog
from tests.conftest import SCHEMA


def test_comma_titles_are_rejoined_not_lost(catalog):
    read = read_catalog(catalog, SCHEMA)
    assert len(read.frame) == 120
    titles = read.frame.set_index("id")["productDisplayName"]
    assert titles[1000].count(",") == 2 and titles[1000].endswith("1000")
    # The label columns were not shifted by the commas.
    assert read.frame.set_index("id").loc[1000, "articleType"] == "Tshirts"


def test_products_columns_joined_and_na_is_missing(catalog):
    df = read_catalog(catalog, SCHEMA).frame.set_index("id")
    assert df.loc[1010, "brandName"] and df.loc[1010, "colour1"] == ""
    assert df.loc[1010, "price"] == 600.0
    assert df.loc[1004, "image"] == "images/1004.jpg"  # empty column -> Kaggle convention


def test_duplicate_id_and_short_row_are_reported(catalog):
    styles = catalog / "styles.csv"
    lines = styles.read_text().splitlines()
    lines.append(lines[5])  # duplicate id
    lines.append("99999,Men,Apparel")  # too few fields
    styles.write_text("\n".join(lines) + "\n")
    read = read_catalog(catalog, SCHEMA)
    reasons = {(p["id"], p["reason"].split(" ")[0]) for p in read.problems}
    assert (lines[5].split(",")[0], "duplicate_id") in reasons
    assert ("99999", "too_few_fields") in reasons
    rows = {p["row"] for p in read.problems}
    assert len(lines) in rows  # the row number of the last line is reported


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"id,gender,productDisplayName\n1,Men,x\n", "missing column"),
    (b"id,gender,masterCategory,subCategory,articleType,productDisplayName\n1,Men,A,B,C,caf\xe9\n", "not UTF-8"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    (tmp_path / "styles.csv").write_bytes(content)
    with pytest.raises(CatalogError, match=message) as err:
        read_catalog(tmp_path, SCHEMA)
    assert "styles.csv" in str(err.value)


def test_missing_folder_or_styles(tmp_path):
    with pytest.raises(CatalogError, match="not a folder"):
        read_catalog(tmp_path / "nope", SCHEMA)
    with pytest.raises(CatalogError, match="styles.csv"):
        read_catalog(tmp_path, SCHEMA)


def test_unlabeled_batch_reads_without_label_columns(tmp_path):
    (tmp_path / "styles.csv").write_text("id,productDisplayName\n5,Nike Men Black Shoes\n")
    df = read_catalog(tmp_path, SCHEMA, require_labels=False).frame
    assert df.loc[0, "id"] == 5 and df.loc[0, "articleType"] == ""
