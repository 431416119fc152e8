"""Drift decisions on fresh synthetic batches (same generator as the training catalog, products the model never
saw), with the small trained model; the null distribution comes from its validation split."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.catalog import read_catalog
from components.monitoring import drift, replay
from tests.browser.test_monitoring_ui import browser, only_from  # noqa: F401 (fixture)
from tests.conftest import SCHEMA, make_catalog


def model_path(params) -> str:
    return str(Path(params.paths.train_fusion) / "model" / "model.pt")


def fresh(tmp_path: Path, name: str, n: int = 180, seed: int = 21) -> Path:
    """A new batch from the training catalog's generator (same size: its prices follow the row number)."""
    return make_catalog(tmp_path / name, n=n, seed=seed, start_id=50_000)


def rewrite_styles(batch: Path, change) -> None:
    styles = batch / "styles.csv"
    lines = styles.read_text().splitlines()
    kept = [out for ln in lines[1:] if (out := change(ln.split(",", 9))) is not None]
    styles.write_text("\n".join([lines[0], *(",".join(f) for f in kept)]) + "\n")


def test_batch_like_the_training_data_does_not_drift(trained, tmp_path):
    params, _, _ = trained
    s = drift.run(params, fresh(tmp_path, "same"), tmp_path / "out", model_path(params))
    assert s["drift_detected"] is False, s["reasons"]
    assert not s["not_measurable"] and len(s["signals"]) == 15  # 6 categorical, 6 numeric, labels, 2 embeddings
    page = (tmp_path / "out" / "report.html").read_text()
    body = page.split("<body", 1)[1].split(">", 1)[1]
    assert body.startswith("<style>" + drift.DECISION_CSS) and "<section id='deepfusion-decision'>" in body[:3000]
    assert "no drift" in body[:4000]  # our decision opens the report
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["drift_detected"] is False and on_disk["calibration"]["null_batch_size"] == 100
    for sig in on_disk["signals"]:
        assert {"signal", "value", "threshold", "null_mean", "z", "drifted"} <= set(sig)


def test_one_category_only_drifts_and_says_which(trained, tmp_path):
    params, _, _ = trained
    batch = fresh(tmp_path, "shoes", n=240)
    rewrite_styles(batch, lambda f: f if f[2] == "Footwear" else None)
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] and "pred_masterCategory" in s["drifted"]
    assert any("predicted masterCategory 'Footwear' 100.0%" in r for r in s["reasons"]), s["reasons"]


def test_darkened_photos_drift(trained, tmp_path):
    params, _, _ = trained
    batch = fresh(tmp_path, "dark")
    for p in (batch / "images").glob("*.jpg"):
        try:
            img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
        except OSError:
            continue
        Image.fromarray((img * [0.4, 0.45, 0.6]).astype(np.uint8)).save(p, format="JPEG")
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] and {"image_brightness", "image_embedding"} & set(s["drifted"]), s["signals"]


def test_unseen_article_types_drift(trained, tmp_path):
    params, _, _ = trained
    batch = fresh(tmp_path, "new_types", n=180)
    rewrite_styles(batch, lambda f: [*f[:4], "Sarees", *f[5:]] if int(f[0]) % 20 == 0 else f)  # 9 of 180
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] and "unseen_articleType" in s["drifted"]
    assert any(r.startswith("5.0% of labelled products have articleType classes the model does not know")
               for r in s["reasons"])


def test_shouted_titles_without_brand_drift(trained, tmp_path):
    params, _, _ = trained
    batch = fresh(tmp_path, "titles")
    rewrite_styles(batch, lambda f: [*f[:9], " ".join(f[9].split()[1:]).upper()])
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert s["drift_detected"] and {"title_length", "text_embedding"} & set(s["drifted"]), s["signals"]


def test_thin_batch_without_products_csv_or_labels_is_measured_not_crashed(trained, tmp_path):
    params, _, _ = trained
    batch = make_catalog(tmp_path / "thin", n=60, seed=3, start_id=60_000, labeled=False)
    (batch / "products.csv").unlink()  # optional: no price
    shutil.rmtree(batch / "images")  # and no photos
    s = drift.run(params, batch, tmp_path / "out", model_path(params))
    assert {"price", "image_brightness", "image_embedding"} <= set(s["not_measurable"])
    assert "unseen_articleType" not in {x["signal"] for x in s["signals"]} and s["quality"] == {}
    assert (tmp_path / "out" / "report.html").is_file()


def test_null_cache_is_reused_and_rebuilt_for_another_model(trained, tmp_path):
    params, _, _ = trained
    batch = fresh(tmp_path, "b", n=100)
    first = drift.run(params, batch, tmp_path / "o1", model_path(params))
    again = drift.run(params, batch, tmp_path / "o2", model_path(params))
    assert again["null_cache_reused"] and again["null_cache"] == first["null_cache"]
    assert again["signals"] == first["signals"]
    stack = str(Path(params.paths.stack) / "combiner.json")  # same fusion network, another model: new null
    other = drift.run(params, batch, tmp_path / "o3", stack)
    assert other["null_cache"] != first["null_cache"] and not other["null_cache_reused"]


def test_empty_batch_is_a_clear_error(trained, tmp_path, capsys, monkeypatch):
    params, _, _ = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "styles.csv").write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n")
    monkeypatch.setattr(drift, "load_params", lambda: params)
    assert drift.main([str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--model", model_path(params)]) == 2
    assert "no readable products" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_malformed_batch_is_a_clear_error(trained, tmp_path, capsys, monkeypatch):
    params, _, _ = trained
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "styles.csv").write_text("sku,name\n1,x\n")
    monkeypatch.setattr(drift, "load_params", lambda: params)
    assert drift.main([str(tmp_path / "bad"), "--output", str(tmp_path / "o"), "--model", model_path(params)]) == 2
    err = capsys.readouterr().err
    assert "styles.csv" in err and "missing column" in err
    assert not (tmp_path / "o").exists()


def test_month_batches_merge_small_months():
    import pandas as pd

    jan, feb, mar = 1451606400, 1454284800, 1456790400  # 2016-01-01, 02-01, 03-01 UTC
    dates = pd.Series([jan] * 5 + [feb] * 2 + [mar] * 6 + [1420070400] * 3, dtype=float)
    b = replay.month_batches(dates, end=1451606400, min_rows=4)
    assert {k: len(v) for k, v in b.items()} == {"2016-01": 5, "2016-03": 8}


def test_replay_writes_batches_in_catalog_layout(trained, tmp_path):
    _, data, _ = trained
    out = tmp_path / "replay"
    index = replay.run(data, out, "2015-03-31", min_rows=20, schema=SCHEMA)
    assert sum(index.values()) > 0
    first = out / next(iter(index))
    read = read_catalog(first, SCHEMA)
    assert len(read.frame) == index[first.name] and not read.problems


def test_backtest_trains_as_of_scores_each_month_and_a_retrain(tmp_path, browser):  # noqa: F811
    from components.config import params_from_dict
    from components.monitoring import backtest
    from tests.conftest import tiny_raw

    data = make_catalog(tmp_path / "data", n=180, seed=4)  # one product a day from 2015-01-01
    params = params_from_dict(tiny_raw(tmp_path, data, {"drift": {
        "reference_date": "2015-03-31", "min_batch_rows": 25, "null_batches": 40,
        "backtest": {"epochs": 2, "retrains": 1}}}))
    result = backtest.run(params, tmp_path / "bt")
    assert [m["month"] for m in result["months"]] == ["2015-04", "2015-05", "2015-06"]
    assert result["as_of_products"] == 90 and all(m["accuracy"] is not None for m in result["months"])
    # The generator's price grows with the row (= the day added): every later month has drifted prices.
    assert result["months"][0]["drift_detected"] and "price" in result["months"][0]["drifted"]
    assert [(r["fired_on"], r["scored_on"]) for r in result["retrains"]] == [("2015-04", "2015-05")]
    for f in ("backtest.json", "backtest.csv", "backtest.png"):
        assert (tmp_path / "bt" / f).stat().st_size > 100
    assert not (tmp_path / "artifacts" / "train_fusion").exists()  # the pipeline's own outputs untouched
    # The months are on the dashboard (project <model>-backtest), each value the month's summary.json, and a
    # real browser (network blocked) shows the panels over the replayed months.
    from components.monitoring import workspace
    from tests.unit.test_monitoring_dashboard import call, free_port, serving

    port = free_port()
    proc = serving([sys.executable, "-c", "import sys; from components.monitoring import workspace; "
                    "workspace.serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]))", params.paths.monitoring,
                    str(port)], port)
    url = f"http://127.0.0.1:{port}"
    try:
        [project] = call(f"{url}/api/projects")
        assert project["name"] == "deepfusion-backtest"
        dash = call(f"{url}/api/v2/dashboards/{project['id']}")
        checked = 0
        for panel in dash["panels"]:
            filters = [{k: v[k] for k in ("tags", "metadata", "metric", "metric_labels")} for v in panel["values"]]
            got = call(f"{url}/api/v2/snapshots/{project['id']}/data_series_batch", {"series_filter": filters})
            batches = [src["metadata"]["batch"] for src in got["sources"]]
            assert sorted(set(batches)) == ["2015-04", "2015-05", "2015-06"], panel["title"]
            for series in got["series"]:
                for batch, value in zip(batches, series["values"], strict=True):
                    summary = json.loads((tmp_path / "bt_work" / "drift" / batch / "summary.json").read_text())
                    expected = workspace.drift_values(summary).get(series["params"]["column"])
                    if expected is None:  # a class this month's predictions never had: no point
                        assert value is None
                        continue
                    assert value == pytest.approx(expected)
                    checked += 1
        assert checked >= 3 * 10  # every month: signals, alarm line, mix, accuracy and macro-F1 per level
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside: list[str] = []
        only_from(page, url, outside)
        page.goto(url)
        page.get_by_text("deepfusion-backtest", exact=True).first.click()
        page.get_by_text("Drift signals against their alarm line").wait_for(timeout=30_000)
        page.get_by_text("2015-06-15", exact=False).first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        for month in ("2015-04-15", "2015-05-15", "2015-06-15"):
            assert month in text
        assert "Accuracy and macro-F1 (labelled batches)" in text and page.locator("svg path").count() > 10
        assert outside == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
