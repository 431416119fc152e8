"""The landing area: half-uploaded batches wait, processed ones are keyed on content, any unreadable batch moves
to _failed/ with the reason instead of blocking every later run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.atomic_io import write_json
from components.lifecycle.provenance import files_md5
from components.orchestration import landing
from tests.conftest import make_catalog

ROOT = Path(__file__).resolve().parents[2]


def ready(batch: Path) -> Path:
    (batch / landing.READY).write_text("")
    return batch


def test_a_batch_is_picked_up_only_once_it_is_marked_ready(tmp_path):
    area = tmp_path / "landing"
    make_catalog(area / "2016-01", n=12)
    assert landing.pending_batches(area) == []  # still uploading, as far as we know
    ready(area / "2016-01")
    assert landing.pending_batches(area) == [str(area / "2016-01")]


def test_processed_marker_is_keyed_on_content_so_a_corrected_upload_runs_again(tmp_path):
    area = tmp_path / "landing"
    batch = ready(make_catalog(area / "2016-02", n=12))
    write_json(area / "_state" / "2016-02.json", {"content_md5": files_md5(batch)})
    assert landing.pending_batches(area) == []
    styles = batch / "styles.csv"
    styles.write_text(styles.read_text().replace("Summer", "Winter"))  # the team re-uploads a fix
    assert landing.pending_batches(area) == [str(batch)]


def test_any_failure_to_read_a_batch_moves_it_to_failed_with_the_reason(tmp_path):
    area = tmp_path / "landing"
    batch = ready(make_catalog(area / "odd", n=12))
    products = batch / "products.csv"
    # An image path longer than the file system allows: os.stat raises ENAMETOOLONG, not a CatalogError.
    lines = products.read_text().splitlines()
    lines[1] = lines[1].replace("images/", "images/" + "x" * 5000, 1)
    products.write_text("\n".join(lines) + "\n")
    with pytest.raises(landing.BatchRejected, match="moved to"):
        landing.check_batch(ROOT, str(batch))
    report = json.loads((area / "_failed" / "odd" / "validation_report.json").read_text())
    assert not batch.exists() and report["success"] is False and report["failures"]
    assert landing.pending_batches(area) == []  # it no longer fails every hourly run
