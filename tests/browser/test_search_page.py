"""The search page in a real browser (Playwright driving Debian's Chromium, every request outside 127.0.0.1
blocked), over a small trained stack and the index `deepfusion search --build` made for it: a reviewer searches
by words with a filter, by an uploaded photo, and asks for more like a hit; thumbnails come back and load
(issue 43)."""
from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.test_monitoring_ui import browser, only_from  # noqa: F401 (fixture)
from tests.browser.test_review_station import PASSWORD, run, serve
from tests.conftest import train_tiny_stack
from tests.unit.test_monitoring_dashboard import free_port


def shown(page) -> list[str]:
    """The hits' product ids, once every thumbnail has loaded (a broken image has naturalWidth 0)."""
    page.wait_for_selector("li.hit")
    for _ in range(200):  # wait_for_function evaluates a string, which the page's CSP (rightly) forbids
        if page.locator("li.hit img").evaluate_all("is => is.every(i => i.complete)"):
            break
        time.sleep(0.05)
    broken = page.locator("li.hit img").evaluate_all("is => is.filter(i => i.naturalWidth === 0).map(i => i.alt)")
    assert broken == []
    return page.locator("li.hit").evaluate_all("ls => ls.map(l => l.dataset.product)")


@pytest.mark.slow
def test_search_by_words_a_filter_an_uploaded_photo_and_more_like_this(browser, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    _, data, _ = train_tiny_stack(home)
    built = run(home, "-m", "components.cli", "search", "--build").stdout
    assert built.startswith("indexed ") and ".npz" in built, built
    run(home, "-m", "components.cli", "review", "user", "ana", DEEPFUSION_REVIEW_PASSWORD=PASSWORD)
    port = free_port()
    proc = serve(home, port)
    url = f"http://127.0.0.1:{port}"
    outside: list[str] = []
    context = browser.new_context()
    try:
        page = context.new_page()
        only_from(page, url, outside)
        page.goto(url)
        page.fill("input[name=user]", "ana")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="Search", exact=True).click()
        page.fill("#q", "Black Watches")
        page.locator("details.filters summary").click()
        page.fill("input[name='f.articleType']", "Watches")
        page.get_by_role("button", name="Search").click()
        words = shown(page)
        assert len(words) >= 5
        assert page.locator("li.hit .muted").all_inner_texts()[0].split(" · ")[0].endswith("Watches")
        assert all(t.split(" · ")[0].endswith("Watches") for t in page.locator("li.hit .muted").all_inner_texts())

        page.goto(f"{url}/search")
        page.set_input_files("#photo", str(data / "images" / "1020.jpg"))  # a Tshirts shot of the catalog
        page.get_by_role("button", name="Search").click()
        by_photo = shown(page)
        assert "1020" in by_photo[:3]
        expect(page.locator("#hit-count")).to_contain_text("like your photo")

        page.locator("li.hit a.like").first.click()
        like = shown(page)
        assert by_photo[0] not in like and len(like) >= 5

        page.fill("#q", "anything")
        page.locator("details.filters summary").click()
        page.fill("input[name='f.articleType']", "Watchs")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("p.flash.error")).to_contain_text("did you mean Watches")
        assert outside == []
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=30)
