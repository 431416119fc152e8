"""Outputs never destroy inputs or unrelated folders, and finished outputs have normal permissions."""
from __future__ import annotations

import os
import stat

import pytest

from components.atomic_io import atomic_dir, write_json
from components.catalog import CatalogError
from components.monitoring import drift
from components.serving import predict


@pytest.mark.parametrize("target", ["styles.csv", "images/1000.jpg", "."])
def test_predict_refuses_to_overwrite_its_input(catalog, target, capsys):
    before = (catalog / "styles.csv").read_bytes()
    rc = predict.main([str(catalog), "--output", str(catalog / target), "--model", "never-loaded.pt"])
    assert rc == 2 and "write the output elsewhere" in capsys.readouterr().err
    assert (catalog / "styles.csv").read_bytes() == before


def test_predict_refuses_a_symlink_into_its_input(catalog, tmp_path, capsys):
    link = tmp_path / "pred.csv"
    link.symlink_to(catalog / "products.csv")
    assert predict.main([str(catalog), "--output", str(link), "--model", "x.pt"]) == 2
    assert "a file of the catalog" in capsys.readouterr().err


def test_drift_refuses_to_wipe_a_folder_it_did_not_write(catalog, tmp_path):
    keep = tmp_path / "work"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(CatalogError, match="not a drift report folder"):
        drift.check_output(catalog, keep)
    with pytest.raises(CatalogError, match="replace the batch"):
        drift.check_output(catalog, catalog.parent)
    assert (keep / "notes.txt").read_text() == "mine"
    report = tmp_path / "old_report"
    report.mkdir()
    (report / "summary.json").write_text("{}")
    drift.check_output(catalog, report)  # an earlier report may be replaced
    drift.check_output(catalog, tmp_path / "new")


def test_atomic_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
