"""The Great Expectations gate on curated data: passes clean data, lists every broken expectation."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.pipeline import ingest, validate
from components.pipeline.validate import DataValidationError
from tests.conftest import SCHEMA

pytestmark = pytest.mark.slow  # runs Great Expectations (seconds per suite)


@pytest.fixture
def ingested(tiny_params):
    ingest.run(tiny_params)
    return tiny_params


def test_suite_passes_on_curated_data_and_writes_docs(ingested):
    report = validate.run(ingested)
    assert report["success"] and report["failures"] == []
    out = Path(ingested.paths.validate)
    assert (out / "data_docs" / "index.html").is_file()
    assert json.loads((out / "report.json").read_text())["success"] is True


def test_group_in_two_splits_and_bad_labels_fail_with_every_failure_listed(ingested):
    path = Path(ingested.paths.ingest) / "products.parquet"
    df = pd.read_parquet(path)
    g = df["group"].iloc[0]
    other = "test" if df.loc[0, "split"] != "test" else "train"
    df.loc[len(df) - 1, "group"] = g
    df.loc[len(df) - 1, "split"] = other
    df.loc[3, "masterCategory"] = "Spaceships"
    df.loc[4, "gender"] = "Robots"
    df.to_parquet(path)
    with pytest.raises(DataValidationError) as err:
        validate.run(ingested)
    msg = str(err.value)
    assert "n_splits" in msg and "Spaceships" in msg and "Robots" in msg
    # The failed run keeps the previous validate output untouched (atomic) and saves its report.
    assert not (Path(ingested.paths.validate) / "report.json").exists()
    assert Path(ingested.paths.validate).with_name("validate_failed.json").is_file()


def test_image_cache_misaligned_with_table_fails(ingested):
    path = Path(ingested.paths.ingest) / "products.parquet"
    pd.read_parquet(path).iloc[:-3].to_parquet(path)
    with pytest.raises(DataValidationError, match="rows_cache"):
        validate.run(ingested)


def test_new_batch_suite_needs_no_labels(tiny_params, catalog):
    from components.catalog import read_catalog

    frame = read_catalog(catalog, SCHEMA, require_labels=False).frame
    frame["has_image"] = True
    results = validate.validate_batch(frame, SCHEMA, labeled=False, max_missing_image_share=0.1)
    assert all(r.success for r in results)
