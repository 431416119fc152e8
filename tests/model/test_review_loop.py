"""Decisions flow back into the data: reviewers decide on the audit's suspects, `deepfusion review export` writes
the corrections, `dvc repro` applies them in ingest (label_source says where each label came from) and the
audit no longer flags what a person checked (issue 41). Plus ingest's handling of corrections that no longer
fit the export."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.catalog import CORRECTION_COLUMNS, CatalogError, read_corrections
from components.config import params_from_dict
from components.pipeline.ingest import apply_corrections
from components.review.cli import open_store
from tests.conftest import ROOT, SCHEMA, make_catalog, tiny_raw

BIN = Path(sys.executable).parent
PASSWORD = "a long enough password"


def cli(home: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=home, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "DEEPFUSION_REVIEW_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def repro(home: Path, *targets: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([str(BIN / "dvc"), "repro", *targets], cwd=home, capture_output=True, text=True, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


@pytest.mark.slow
def test_decisions_export_repro_and_the_audit_leaves_checked_products_out(tmp_path):
    home = tmp_path / "home"
    data = make_catalog(home / "data", n=150, seed=5)
    lines = (data / "styles.csv").read_text().splitlines()
    for i in range(10, 130, 15):  # planted mislabels: another product's whole path
        donor, fields = lines[1 + (i + 7) % 150].split(",", 5), lines[1 + i].split(",", 5)
        lines[1 + i] = ",".join([*fields[:2], *donor[2:5], fields[5]])
    (data / "styles.csv").write_text("\n".join(lines) + "\n")
    raw = tiny_raw(home, data)
    raw["paths"] = {k: (os.path.relpath(v, home) if isinstance(v, str) and v.startswith(str(home)) else v)
                    for k, v in raw["paths"].items()}  # relative, as in a project: dvc.yaml names them
    (home / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", home / "dvc.yaml")
    shutil.copytree(ROOT / "corrections", home / raw["paths"]["corrections"].rsplit("/", 1)[0])
    os.symlink(ROOT / "components", home / "components")
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=home, check=True)
    repro(home, "audit")
    before = pd.read_csv(home / raw["paths"]["audit"] / "audit.csv", dtype={"id": str})
    assert before["suspect"].sum() >= 4

    cli(home, "review", "user", "ana")
    cli(home, "review", "import", "audit")
    params = params_from_dict(yaml.safe_load((home / "params.yaml").read_text()))
    os.chdir(home)  # the store's default SQLite file is relative to the project
    try:
        store = open_store(params)
        accepted, confirmed = store.next_item("audit", "ana"), None
        store.decide(accepted.id, "ana", "accept", accepted.version)
        confirmed = store.next_item("audit", "ana")
        store.decide(confirmed.id, "ana", "confirm", confirmed.version)
    finally:
        os.chdir(ROOT)
    out = cli(home, "review", "export")
    assert "corrected level(s), 1 confirmation(s)" in out
    table = read_corrections(home / raw["paths"]["corrections"], params.catalog)
    assert set(table["id"]) == {accepted.product_id, confirmed.product_id}

    repro(home, "audit")  # the corrections file changed: ingest and everything after it run again
    products = pd.read_parquet(home / raw["paths"]["ingest"] / "products.parquet").set_index("id")
    products.index = products.index.astype(str)
    fixed = products.loc[accepted.product_id]
    assert [fixed[lvl] for lvl in params.catalog.levels] == accepted.suggestions[0]["path"]
    assert fixed["label_source"] == "review"
    assert products.loc[confirmed.product_id, "label_source"] == "confirmed"
    assert (products["label_source"] == "export").sum() == len(products) - 2
    after = pd.read_csv(home / raw["paths"]["audit"] / "audit.csv", dtype={"id": str}).set_index("id")
    assert not after.loc[confirmed.product_id, "suspect"] and not after.loc[accepted.product_id, "suspect"]
    report = json.loads((home / raw["paths"]["ingest"] / "report.json").read_text())["corrections"]
    assert report["corrected_products"] == 1 and report["confirmed_products"] == 1
    assert report["vanished"] == [] and report["export_changed"] == []


def frame() -> pd.DataFrame:
    return pd.DataFrame({"id": [1, 2, 3], "masterCategory": ["Apparel"] * 3, "subCategory": ["Topwear"] * 3,
                         "articleType": ["Tshirts", "Shirts", "Other"],
                         "articleType_raw": ["Tshirts", "Shirts", "Kilt"]})


def corrections(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(CORRECTION_COLUMNS, (*r, "pick", "ana", "2026-12-05T10:00:00Z", "1")))
                         for r in rows], columns=CORRECTION_COLUMNS)


def test_corrections_apply_only_while_the_export_still_says_what_the_reviewer_saw():
    levels = ("masterCategory", "subCategory", "articleType")
    out, report = apply_corrections(frame(), corrections(
        ("1", "articleType", "Tshirts", "Shirts"),            # applies
        ("2", "subCategory", "Topwear", "Bottomwear"),        # the export moved product 2 meanwhile: not applied,
        ("2", "articleType", "Jeans", "Trousers"),            # and neither is its other level
        ("3", "articleType", "Kilt", "Skirts"),               # the export's own value of a folded rare class
        ("9", "articleType", "Tshirts", "Shirts"),            # product 9 left the catalog
    ), levels)
    assert out["articleType"].tolist() == ["Shirts", "Shirts", "Skirts"]
    assert out["subCategory"].tolist() == ["Topwear"] * 3
    assert out["label_source"].tolist() == ["review", "export", "review"]
    assert report["vanished"] == ["9"] and [c["level"] for c in report["export_changed"]] == ["articleType"]
    assert report["corrected_products"] == 2 and report["corrected_levels"] == 2


def test_a_broken_corrections_file_is_refused_naming_row_and_field(tmp_path):
    path = tmp_path / "corrections.csv"
    path.write_text("id,level,old,new\n1,articleType,Tshirts,Shirts\n")
    with pytest.raises(CatalogError, match=r"columns \['action', 'reviewer', 'time', 'decision'\] missing"):
        read_corrections(path, SCHEMA)
    path.write_text(",".join(CORRECTION_COLUMNS) + "\n1,colour,Red,Blue,pick,ana,t,1\n")
    with pytest.raises(CatalogError, match="row 2: level 'colour' is not one of the catalog's levels"):
        read_corrections(path, SCHEMA)
    path.write_text(",".join(CORRECTION_COLUMNS) + "\nabc,articleType,Tshirts,Shirts,pick,ana,t,1\n")
    with pytest.raises(CatalogError, match="row 2: id 'abc' is not a valid product id"):
        read_corrections(path, SCHEMA)
    assert read_corrections(tmp_path / "none.csv", SCHEMA).empty  # no file: no corrections
