"""The monitoring dashboard in a real browser (Playwright driving Debian's Chromium), every request outside
127.0.0.1 blocked: `deepfusion monitor add` puts three months of drift reports on it, `deepfusion monitor ui`
serves it, and the page shows each panel with the months (issue 42)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import load_raw
from tests.conftest import ROOT
from tests.unit.test_monitoring_dashboard import MONTHS, free_port, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail("no Chromium: scripts/test.sh installs Debian's `chromium` package when run as root")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def only_from(page, prefix: str, outside: list[str]) -> None:
    """Let the page load only addresses under `prefix`; anything else (a CDN, fonts, telemetry) is aborted and
    noted in `outside`: the page must not need any of it."""
    def route(r):
        if r.request.url.startswith(prefix):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)


def cli(home: Path, *args: str, **kw):
    return subprocess.run([sys.executable, "-m", "components.cli", *args], cwd=home, capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture
def dashboard(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    raw = load_raw(ROOT / "params.yaml")
    raw["paths"]["monitoring"] = str(tmp_path / "monitoring")
    (home / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for i, (month, summary) in enumerate(MONTHS.items()):
        report = tmp_path / "reports" / month
        report.mkdir(parents=True)
        (report / "summary.json").write_text(json.dumps(summary))
        r = cli(home, "monitor", "add", str(report), "--at", f"2016-{i + 1:02d}-15")
        assert r.returncode == 0, r.stderr
    bad = cli(home, "monitor", "add", str(tmp_path))  # not a report: a clear error, nothing added
    assert bad.returncode == 2 and "no summary.json" in bad.stderr
    refused = cli(home, "monitor", "ui", "--host", "0.0.0.0")
    assert refused.returncode == 2 and "without a login" in refused.stderr
    port = free_port()
    proc = serving([sys.executable, "-m", "components.cli", "monitor", "ui", "--port", str(port)], port, cwd=home)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_the_dashboard_shows_every_panel_with_the_months_offline(browser, dashboard, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []
    only_from(page, dashboard, outside)
    page.goto(dashboard)
    page.get_by_text("deepfusion", exact=True).first.click()
    panel = page.get_by_text("Drift signals against their alarm line")
    panel.wait_for(timeout=30_000)
    page.get_by_text("2016-03-15", exact=False).first.wait_for(timeout=30_000)
    text = page.inner_text("body")
    for title in ("Drift signals against their alarm line", "Predicted top-level mix",
                  "Accuracy and macro-F1 (labelled batches)"):
        assert title in text
    for legend in ("signal:text_embedding", "alarm_line", "mix:Footwear", "accuracy:articleType"):
        assert legend in text
    for month in ("2016-01-15", "2016-02-15", "2016-03-15"):
        assert month in text  # a point per month on the time axis
    assert page.locator("svg path").count() > 10  # the charts are drawn, not just their titles
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert outside == []
