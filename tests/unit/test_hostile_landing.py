"""The landing area: half-uploaded batches wait, processed ones are keyed on content, any unreadable batch moves
to _failed/ with the reason instead of blocking every later run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.lifecycle.provenance import files_md5
from components.orchestration import batch_state, landing
from tests.conftest import SCHEMA, make_catalog

ROOT = Path(__file__).resolve().parents[2]


def ready(batch: Path) -> Path:
    (batch / landing.READY).write_text("")
    return batch


def pending(area: Path) -> list[str]:
    return [b["batch"] for b in landing.pending_batches(area)]


def test_a_batch_is_picked_up_only_once_it_is_marked_ready(tmp_path):
    area = tmp_path / "landing"
    make_catalog(area / "2016-01", n=12)
    assert pending(area) == []  # still uploading, as far as we know
    ready(area / "2016-01")
    assert pending(area) == [str(area / "2016-01")]


def test_processed_marker_is_keyed_on_content_so_a_corrected_upload_runs_again(tmp_path):
    area = tmp_path / "landing"
    batch = ready(make_catalog(area / "2016-02", n=12))
    for step in ("validated", "reported"):
        batch_state.advance(area, "2016-02", step, files_md5(batch))
    assert pending(area) == []
    styles = batch / "styles.csv"
    styles.write_text(styles.read_text().replace("Summer", "Winter"))  # the team re-uploads a fix
    assert pending(area) == [str(batch)]


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
    assert pending(area) == []  # it no longer fails every hourly run
    state = batch_state.read_state(area, "odd")
    assert state.state == "failed" and state.reason == report["failures"][0]


def failed_report(area: Path, name: str) -> str:
    return (area / "_failed" / name / "validation_report.json").read_text()


def test_a_symlinked_csv_is_refused_and_no_byte_of_its_target_reaches_the_report(tmp_path):
    """Issue 39.2: styles.csv linked to a worker's secret (the generated Airflow admin password file is one line
    of JSON). The report the uploader can read names the link, never the target's content."""
    secret = tmp_path / "simple_auth_manager_passwords.json.generated"
    secret.write_text('{"admin": "s3cr3t-Pa55word"}\n')
    area = tmp_path / "landing"
    batch = make_catalog(area / "leak", n=12)
    (batch / "styles.csv").unlink()
    (batch / "styles.csv").symlink_to(secret)
    ready(batch)
    with pytest.raises(landing.BatchRejected, match="symbolic link"):
        landing.check_batch(ROOT, str(batch))
    report = failed_report(area, "leak")
    assert "s3cr3t" not in report and "admin" not in report and "symbolic link" in report


@pytest.mark.parametrize("kind", ["image_link", "fifo", "linked_folder"])
def test_links_and_special_files_anywhere_in_a_batch_are_refused(tmp_path, kind):
    import os

    area = tmp_path / "landing"
    batch = make_catalog(area / kind, n=12)
    image = next((batch / "images").glob("*.jpg"))
    if kind == "image_link":
        image.unlink()
        image.symlink_to("/etc/hostname")
    elif kind == "fifo":
        os.mkfifo(batch / "images" / "pipe.jpg")  # a reader would block on it forever
    else:
        (batch / "more").symlink_to(tmp_path, target_is_directory=True)
    ready(batch)
    with pytest.raises(landing.BatchRejected, match="symbolic link|not a regular file"):
        landing.check_batch(ROOT, str(batch))


def test_size_and_row_caps_are_checked_before_reading(tmp_path):
    from components.catalog import CatalogError, check_upload

    batch = make_catalog(tmp_path / "big", n=40)
    check_upload(batch, max_bytes=10 * 2**20, max_rows=40)
    with pytest.raises(CatalogError, match=r"more than 39 rows \(landing.max_batch_rows\)"):
        check_upload(batch, max_bytes=10 * 2**20, max_rows=39)
    with pytest.raises(CatalogError, match=r"landing.max_batch_mb"):
        check_upload(batch, max_bytes=1000, max_rows=40)


def test_a_non_catalog_file_is_not_quoted_back(tmp_path):
    from components.catalog import CatalogError, read_catalog

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "styles.csv").write_text("token=AKIA-very-secret\n")
    with pytest.raises(CatalogError) as exc:
        read_catalog(folder, SCHEMA)
    assert "AKIA" not in str(exc.value) and "missing column" in str(exc.value)


def test_a_malformed_state_file_does_not_block_the_landing_area(tmp_path):
    """Issue 39.8: uploaders can write _state/; one broken file used to fail every hourly run."""
    area = tmp_path / "landing"
    a, b = ready(make_catalog(area / "a", n=12)), ready(make_catalog(area / "b", n=12, seed=3))
    (area / "_state").mkdir()
    (area / "_state" / "a.json").write_text("{not json")
    (area / "_state" / "b.json").write_text("[1, 2]")
    assert pending(area) == [str(a), str(b)]
    kept = sorted(f.name.split(".")[0] for f in (area / "_state" / "_malformed").iterdir())
    assert kept == ["a", "b"] and not (area / "_state" / "a.json").exists()  # set aside for the operator


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", ".hidden", "_failed", "", "x" * 200])
def test_categorize_takes_only_a_batch_name_inside_the_landing_area(tmp_path, name):
    from components.catalog import CatalogError

    (tmp_path / "landing").mkdir()
    with pytest.raises(CatalogError):
        landing.resolve_batch(tmp_path / "landing", name)


def test_a_linked_batch_folder_is_not_a_batch(tmp_path):
    from components.catalog import CatalogError

    area = tmp_path / "landing"
    area.mkdir()
    (area / "link").symlink_to(make_catalog(tmp_path / "outside", n=12), target_is_directory=True)
    with pytest.raises(CatalogError, match="no such batch"):
        landing.resolve_batch(area, "link")


def test_formula_cells_are_neutralised_in_csv_outputs():
    import pandas as pd

    from components.atomic_io import csv_bytes

    frame = pd.DataFrame({"id": [1, 2, 3], "title": ["=HYPERLINK(\"http://x\")", "+1 shoe", "Plain"],
                          "price": [-5.0, 1.0, 2.0]})
    text = csv_bytes(frame).decode()
    assert "'=HYPERLINK" in text and "'+1 shoe" in text and ",-5.0" in text and "\n3,Plain,2.0" in text


@pytest.mark.parametrize("error", [MemoryError(), OSError(28, "No space left on device")])
def test_a_worker_side_error_retries_instead_of_rejecting_the_batch(tmp_path, monkeypatch, error):
    """Issue 39.11: a full disk or an out-of-memory worker once moved a good batch to _failed/ for good."""
    from components import catalog

    area = tmp_path / "landing"
    batch = ready(make_catalog(area / "good", n=12))

    def broken(*_a, **_k):
        raise error

    monkeypatch.setattr(catalog, "read_catalog", broken)
    with pytest.raises(type(error)):
        landing.check_batch(ROOT, str(batch))
    assert batch.is_dir() and not (area / "_failed").exists()
