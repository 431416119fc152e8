"""The validation pages (Great Expectations Data Docs, as the validate stage and the DAGs write them) in a real
browser with every network request blocked: they are styled and their tables are filled (issue 42)."""
from __future__ import annotations

import pandas as pd

from components.pipeline.validate import run_suites
from components.web_assets import ASSETS, external_loads
from tests.browser.test_monitoring_ui import browser, only_from  # noqa: F401 (fixture)


def test_the_validation_page_is_styled_and_filled_with_the_network_blocked(browser, tmp_path):  # noqa: F811
    assert (ASSETS / "urls.json").is_file(), "no web assets: scripts/setup.sh fetches them"
    from components.pipeline.validate import _gx

    _, gxe = _gx()
    frame = pd.DataFrame({"price": [10.0, 20.0, 30.0, 99999.0], "gender": ["Men", "Women", "Men", "Robots"]})
    site = tmp_path / "data_docs"
    results = run_suites({"products": frame}, {"products": [
        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=1000),
        gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=["Men", "Women"]),
    ]}, site)
    assert not results[0].success and len(results[0].failures) == 2
    pages = sorted(site.glob("validations/**/*.html"))
    assert len(pages) == 1
    for page_file in site.rglob("*.html"):  # nothing left that a page would load from the network
        assert external_loads(page_file.read_text(encoding="utf-8")) == [], page_file

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []
    only_from(page, "file://", outside)
    page.goto(pages[0].as_uri())
    page.wait_for_load_state("load")
    # bootstrap's stylesheet applied (reboot collapses table borders; .text-danger is its red), font-awesome's
    # icon font, and the scripts ran (jQuery, bootstrap-table, vega-embed)
    table = page.locator("table.table").first
    assert table.evaluate("t => getComputedStyle(t).borderCollapse") == "collapse"
    icon = page.locator(".fas.text-danger").first
    assert icon.evaluate("e => getComputedStyle(e).color") == "rgb(220, 53, 69)"
    assert "Font Awesome" in icon.evaluate("e => getComputedStyle(e).fontFamily")
    assert page.evaluate("() => typeof window.jQuery === 'function' && typeof jQuery.fn.bootstrapTable"
                         " === 'function' && typeof window.vegaEmbed === 'function'")
    text = page.inner_text("body")
    for expected in ("price", "gender", "Robots", "99999"):  # the failed expectations with their values
        assert expected in text, expected
    page.screenshot(path=str(tmp_path / "validation.png"), full_page=True)
    assert outside == []
