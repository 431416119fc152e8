"""Hostile and broken styles.csv rows: every line ends up read or rejected with a reason and its row number."""
from __future__ import annotations

import pytest

from components.catalog import MAX_FIELD_CHARS, CatalogError, read_catalog
from tests.conftest import SCHEMA

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def row(pid: str, title: str = "Puma Men Black Tshirt") -> str:
    return f"{pid},Men,Apparel,Topwear,Tshirts,Black,Summer,2015,Casual,{title}"


def read(tmp_path, lines: list[str]):
    (tmp_path / "styles.csv").write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return read_catalog(tmp_path, SCHEMA, require_labels=False)


def reasons(result) -> dict[int, str]:
    return {p["row"]: p["reason"] for p in result.problems}


def test_a_field_longer_than_the_csv_default_limit_is_just_a_long_title(tmp_path):
    result = read(tmp_path, [row("1", "x" * 200_000), row("2")])
    assert list(result.frame["id"]) == [1, 2] and len(result.frame.loc[0, "productDisplayName"]) == 200_000


def test_ids_that_are_not_plain_int64_are_rejected_not_crashing(tmp_path):
    result = read(tmp_path, [row("²"), row("123456789012345678901"), row("-4"), row("0"), row("5")])
    assert list(result.frame["id"]) == [5]
    assert all(r.startswith("bad_id") for r in reasons(result).values()) and set(reasons(result)) == {2, 3, 4, 5}


def test_leading_zeros_name_the_same_product(tmp_path):
    result = read(tmp_path, [row("7"), row("007")])
    assert list(result.frame["id"]) == [7]
    assert reasons(result) == {3: "duplicate_id (same product as id 7)"}


def test_an_unclosed_quote_does_not_swallow_the_rest_of_the_file(tmp_path):
    lines = [row("1"), row("2", '"Nike Women Pink Short'), row("3"), row("4", "Adidas, Men, Blue Tshirt"), row("5")]
    result = read(tmp_path, lines)
    assert list(result.frame["id"]) == [1, 2, 3, 4, 5]  # every line read
    assert result.frame.loc[1, "productDisplayName"] == '"Nike Women Pink Short'
    assert result.frame.loc[3, "productDisplayName"] == "Adidas, Men, Blue Tshirt"
    assert reasons(result)[3].startswith("unbalanced_quote")
    # Rows read + rows rejected (the quote note is not a rejection) add up to the data lines.
    rejected = [p for p in result.problems if not p.get("kept")]
    assert len(result.frame) + len(rejected) == len(lines)


def test_a_field_past_any_sane_size_is_a_clear_error_naming_the_line(tmp_path):
    with pytest.raises(CatalogError, match=r"styles.csv: line 3: field larger than field limit"):
        read(tmp_path, [row("1"), row("2", '"' + "x" * (MAX_FIELD_CHARS + 10) + '"')])
