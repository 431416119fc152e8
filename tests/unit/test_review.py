"""The review station on small synthetic queues: the store's leases, optimistic concurrency and append-only
trail, the pages (login, CSRF, expiry, roles) and the HTTP API through Flask's test client, the queue builders
and the corrections export (issue 41)."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from components.review import queues
from components.review.app import create_app
from components.review.catalog_index import CatalogIndex
from components.review.cli import corrections_table
from components.review.store import ReviewError, StaleItem, Store

LEVELS = ["top", "mid", "leaf"]
TAXONOMY = [["Apparel", "Topwear", "Tshirts"], ["Apparel", "Topwear", "Shirts"], ["Footwear", "Shoes", "Casual"]]
PASSWORD = "a long enough password"


def item(n: int, queue: str = "audit", image: str = "", root: str = "/nonexistent") -> dict:
    return {"queue": queue, "source": "s1", "product_id": f"P{n}", "rank": float(n),
            "current_path": ["Apparel", "Topwear", "Shirts"],
            "suggestions": [{"path": ["Apparel", "Topwear", "Tshirts"], "confidence": 0.8},
                            {"path": ["Footwear", "Shoes", "Casual"], "confidence": 0.1}],
            "reason": "leaf: filed as Shirts", "product": {"title": f"Product {n}", "image": image,
                                                          "image_root": root, "metadata": {"colour": "Red"}}}


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'review.db'}", lease_minutes=10)
    s.add_user("ana", PASSWORD, "admin")
    s.add_user("ben", PASSWORD, "reviewer")
    s.enqueue([item(n) for n in range(6)])
    return s


def test_two_reviewers_never_hold_the_same_item_and_the_order_is_the_rank(store):
    a, b = store.next_item("audit", "ana"), store.next_item("audit", "ben")
    assert (a.product_id, b.product_id) == ("P0", "P1")
    assert store.next_item("audit", "ana").id == a.id  # one's own lease comes back first
    assert store.counts()[0] == {"queue": "audit", "open": 6, "leased": 2, "decided": 0}
    assert store.enqueue([item(0)]) == (0, 1)  # queued once per source
    again = {**item(1), "source": "s2"}  # a new audit run flags an open product again: still one item
    assert store.enqueue([again]) == (0, 1)


def test_reviewers_asking_at_once_get_different_items(store):
    got, start = [], threading.Barrier(4)

    def lease(user: str) -> None:
        start.wait()
        got.append(store.next_item("audit", user).product_id)

    threads = [threading.Thread(target=lease, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["P0", "P1", "P2", "P3"]


def test_a_stale_or_foreign_decision_is_refused_and_nothing_is_lost(store):
    a = store.next_item("audit", "ana")
    with pytest.raises(StaleItem, match="held by another reviewer"):
        store.decide(a.id, "ben", "confirm", a.version)
    store.decide(a.id, "ana", "accept", a.version)
    with pytest.raises(StaleItem, match="changed since you loaded it"):
        store.decide(a.id, "ana", "confirm", a.version)
    with pytest.raises(ReviewError, match="not in the catalog's taxonomy"):
        b = store.next_item("audit", "ben")
        store.decide(b.id, "ben", "pick", b.version, ["Apparel", "Topwear", "Kilts"], {tuple(p) for p in TAXONOMY})
    assert [d["action"] for d in store.trail()] == ["accept"]


def test_two_decisions_at_once_on_one_item_one_wins(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'race.db'}")
    s.enqueue([item(0)])
    it = s.item(1)  # nobody holds it: both reviewers load version 1 and decide at the same moment
    results, start = [], threading.Barrier(2)

    def decide(user: str, action: str) -> None:
        start.wait()
        try:
            results.append(s.decide(it.id, user, action, it.version))
        except StaleItem as exc:
            results.append(exc)

    threads = [threading.Thread(target=decide, args=a) for a in (("ana", "accept"), ("ben", "confirm"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1 and sum(isinstance(r, StaleItem) for r in results) == 1
    assert len(s.trail()) == 1


def test_undo_takes_back_ones_own_last_decision_only(store):
    a = store.next_item("audit", "ana")
    store.decide(a.id, "ana", "accept", a.version)
    b = store.next_item("audit", "ben")
    store.decide(b.id, "ben", "skip", b.version)
    assert store.next_item("audit", "ben").id != b.id  # a skipped item is not offered to the same reviewer again
    assert store.undo("ana")["item"] == a.id
    back = store.item(a.id)
    assert back.status == "open" and back.lease_user == "ana"  # back to its reviewer, held
    with pytest.raises(ReviewError, match="nothing to undo"):
        store.undo("ana")
    # an item someone else decided after you cannot be taken back by you
    c = store.next_item("audit", "ana")
    store.decide(c.id, "ana", "skip", c.version)
    c2 = store.item(c.id)
    store.decide(c.id, "ben", "confirm", c2.version)
    with pytest.raises(StaleItem, match="decided by someone else"):
        store.undo("ana")
    assert [e["action"] for e in store.effective()] == ["confirm"]


def test_the_decision_trail_cannot_be_edited_in_the_database(store):
    a = store.next_item("audit", "ana")
    store.decide(a.id, "ana", "accept", a.version)
    for sql in ("UPDATE decisions SET reviewer = 'mallory'", "DELETE FROM decisions"):
        with pytest.raises(sa.exc.IntegrityError, match="append-only"), store.engine.begin() as conn:
            conn.execute(sa.text(sql))
    assert store.trail()[0]["reviewer"] == "ana"


def test_users_need_a_real_password_and_a_known_role(store):
    with pytest.raises(ReviewError, match="at least 10"):
        store.add_user("cy", "short")
    with pytest.raises(ReviewError, match="role"):
        store.add_user("cy", PASSWORD, "root")
    with pytest.raises(ReviewError, match="user name"):
        store.add_user("../cy", PASSWORD)
    assert store.login("ana", PASSWORD) == {"name": "ana", "role": "admin"}
    assert store.login("ana", "wrong password!") is None and store.login("nobody", PASSWORD) is None


# --- the web app ---------------------------------------------------------------------------------------------

def make_app(store, tmp_path, minutes: float = 60.0):
    root = tmp_path / "catalog"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (60, 80), (200, 30, 30)).save(root / "images" / "7.jpg")
    (tmp_path / "secret.jpg").write_bytes((root / "images" / "7.jpg").read_bytes())
    products = pd.DataFrame({"id": ["7", "8"], "productDisplayName": ["Red Tee", "Blue Shirt"],
                             "image": ["images/7.jpg", "images/8.jpg"], "top": ["Apparel"] * 2,
                             "mid": ["Topwear"] * 2, "leaf": ["Tshirts", "Shirts"], "has_image": [True, False]})
    store.enqueue([item(10, image="images/7.jpg", root=str(root)), item(11, image="../secret.jpg", root=str(root))])
    app = create_app(store, LEVELS, TAXONOMY, secret_key=b"k" * 32, session_minutes=minutes,
                     index=CatalogIndex(products, LEVELS, root),
                     upload=lambda ids, source: (store.enqueue(queues.upload_items(
                         ids, products, LEVELS, source, root, _P())[0])[0], [i for i in ids if i not in ("7", "8")]))
    app.config["TESTING"] = True
    return app


class _P:  # the two params fields upload_items reads
    class catalog:  # noqa: N801
        categorical, numeric = [], []


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(client, user: str = "ben", password: str = PASSWORD):
    token = csrf(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"user": user, "password": password, "csrf_token": token, "next": "/"})


def test_pages_need_a_login_and_forms_need_their_csrf_token(store, tmp_path):
    client = make_app(store, tmp_path).test_client()
    assert client.get("/").status_code == 302 and "/login" in client.get("/").headers["Location"]
    assert log_in(client, password="wrong password").status_code == 401
    assert log_in(client).status_code == 302
    page = client.get("/queue/audit", follow_redirects=True)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Product 0" in html and "leaf: filed as Shirts" in html
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    item_id = int(re.search(r'data-item="(\d+)"', html).group(1))
    version = re.search(r'name="version" value="(\d+)"', html).group(1)
    forged = client.post(f"/item/{item_id}", data={"action": "accept", "version": version})  # no token
    assert forged.status_code == 400 and "The form was refused" in forged.get_data(as_text=True)
    assert store.trail() == []
    ok = client.post(f"/item/{item_id}", data={"action": "pick", "version": version, "csrf_token": csrf(html),
                                               "path": "Footwear > Shoes > Casual"})
    assert ok.status_code == 302 and store.trail()[0]["after"] == ["Footwear", "Shoes", "Casual"]
    nxt = client.get(ok.headers["Location"], follow_redirects=True).get_data(as_text=True)
    assert "Product 1" in nxt  # straight on to the next item
    bad = client.post(f"/item/{item_id + 1}", data={"action": "pick", "version": "2", "csrf_token": csrf(nxt),
                                                    "path": "Nowhere > At > All"}, follow_redirects=True)
    assert "not in the catalog&#39;s taxonomy" in bad.get_data(as_text=True)


def test_password_guessing_is_throttled_per_user_and_address(store, tmp_path, monkeypatch):
    """A boundary test: a script trying passwords gets 5 tries per user name per 15 minutes (form and API
    alike), then even the right password is refused until the window moves on; other users are not locked."""
    client = make_app(store, tmp_path).test_client()
    for _ in range(5):
        assert log_in(client, password="guess").status_code == 401
    refused = log_in(client)  # the right password, too soon
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many failed logins" in refused.get_data(as_text=True)
    api = client.post("/api/token", json={"user": "ben", "password": PASSWORD})
    assert api.status_code == 429 and "too many failed logins" in api.get_json()["error"]
    store.add_user("ann", PASSWORD, "reviewer")
    assert client.post("/api/token", json={"user": "ann", "password": PASSWORD}).status_code == 200
    later = time.time() + 901
    monkeypatch.setattr("components.review.app._clock", lambda: later)
    assert log_in(client).status_code == 302
    for n in range(30):  # many names from one address: the address's own limit
        client.post("/api/token", json={"user": f"nobody{n}", "password": "guess"})
    assert client.post("/api/token", json={"user": "ann", "password": PASSWORD}).status_code == 429


def test_an_expired_session_must_log_in_again(store, tmp_path, monkeypatch):
    client = make_app(store, tmp_path, minutes=60).test_client()
    log_in(client)
    assert client.get("/").status_code == 200
    later = time.time() + 3601  # the server's clock an hour and a second after the login; the client keeps
    monkeypatch.setattr("components.review.app._clock", lambda: later)  # sending its cookie

    gone = client.get("/", follow_redirects=True)
    assert "Your session expired" in gone.get_data(as_text=True) and "Log in" in gone.get_data(as_text=True)


def test_only_admins_read_the_trail_and_queue_lists(store, tmp_path):
    app = make_app(store, tmp_path)
    client = app.test_client()
    log_in(client)
    assert client.get("/trail").status_code == 403
    home = client.get("/").get_data(as_text=True)
    assert client.post("/upload", data={"ids": "7", "csrf_token": csrf(home)}).status_code == 403
    admin = app.test_client()
    log_in(admin, "ana")
    home = admin.get("/").get_data(as_text=True)
    done = admin.post("/upload", data={"ids": "7\n8\nX9", "source": "photo shoot", "csrf_token": csrf(home)},
                      follow_redirects=True).get_data(as_text=True)
    assert "2 item(s) queued from &#39;photo shoot&#39;; not in the catalog: X9" in done
    assert admin.get("/trail").status_code == 200


def test_images_come_only_from_inside_the_catalog(store, tmp_path):
    client = make_app(store, tmp_path).test_client()
    log_in(client)
    ids = {v.product_id: v.id for v in (store.item(i) for i in range(1, 9))}
    assert client.get(f"/image/{ids['P10']}").status_code == 200
    assert client.get(f"/image/{ids['P11']}").status_code == 404  # ../secret.jpg: outside the catalog folder
    assert client.get("/example/7").status_code == 200 and client.get("/example/..%2Fsecret").status_code == 404


def api(client, method: str, path: str, token: str | None = None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return getattr(client, method)(path, headers=headers, **kw)


def test_the_api_decides_with_a_bearer_token_and_answers_conflicts(store, tmp_path):
    client = make_app(store, tmp_path).test_client()
    assert client.post("/api/token", json={"user": "ben", "password": "nope nope nope"}).status_code == 401
    token = client.post("/api/token", json={"user": "ben", "password": PASSWORD}).get_json()["token"]
    log_in(client)  # a logged-in cookie alone does not open the API
    assert api(client, "get", "/api/queues").status_code == 401
    assert api(client, "get", "/api/queues", token + "x").status_code == 401
    got = api(client, "post", "/api/queues/audit/next", token).get_json()
    bad = api(client, "post", f"/api/items/{got['id']}/decision", token, json={"action": "pick", "version": 2,
                                                                             "path": ["A", "B", "C"]})
    assert bad.status_code == 400 and "taxonomy" in bad.get_json()["error"]
    assert api(client, "post", f"/api/items/{got['id']}/decision", token,
               json={"action": "accept"}).get_json()["error"].startswith("version")
    ok = api(client, "post", f"/api/items/{got['id']}/decision", token,
             json={"action": "accept", "version": got["version"]})
    assert ok.status_code == 200 and ok.get_json()["after"] == ["Apparel", "Topwear", "Tshirts"]
    stale = api(client, "post", f"/api/items/{got['id']}/decision", token,
                json={"action": "confirm", "version": got["version"]})
    assert stale.status_code == 409 and stale.get_json()["item"]["status"] == "decided"
    assert api(client, "post", "/api/undo", token).get_json()["item"] == got["id"]
    assert api(client, "get", "/api/items/999", token).status_code == 404


def test_search_needs_a_login_and_says_what_is_missing_without_an_index(store, tmp_path):
    """This station has no model: the search page and API say so instead of failing (the model-backed search is
    tests/model/test_predict_search.py and the browser test)."""
    client = make_app(store, tmp_path).test_client()
    assert client.get("/search?q=red").status_code == 302  # pages need a login
    assert client.post("/api/search", json={"text": "red"}).status_code == 401
    log_in(client)
    page = client.get("/search?q=red")
    assert page.status_code == 503 and "Search is unavailable: search is not set up" in page.get_data(as_text=True)
    assert client.post("/search", data={"q": "red"}).status_code == 400  # the photo form needs its CSRF token
    token = client.post("/api/token", json={"user": "ben", "password": PASSWORD}).get_json()["token"]
    assert api(client, "post", "/api/search", token, json=["red"]).status_code == 400
    assert "photo_base64" in api(client, "post", "/api/search", token,
                                 json={"photo_base64": "%%%"}).get_json()["error"]
    assert "filters" in api(client, "post", "/api/search", token,
                            json={"text": "red", "filters": {"leaf": "Tshirts"}}).get_json()["error"]
    assert api(client, "post", "/api/search", token, json={"text": "red"}).status_code == 503


# --- queues and the export -----------------------------------------------------------------------------------

def test_top_paths_rank_only_paths_of_the_taxonomy():
    labels = [["Apparel", "Footwear"], ["Shoes", "Topwear"], ["Casual", "Shirts", "Tshirts"]]
    probs = [np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]]), np.array([[0.5, 0.2, 0.3]])]
    best = queues.top_paths(probs, labels, TAXONOMY, k=3)[0]
    # Casual alone is the likeliest leaf, but Footwear > Shoes > Casual is 0.1 * 0.2 * 0.5 = 0.01
    assert [b["path"][-1] for b in best] == ["Tshirts", "Shirts", "Casual"]
    assert best[0]["confidence"] == pytest.approx(0.9 * 0.8 * 0.3, abs=1e-4)


def test_corrections_have_one_row_per_changed_level_and_per_confirmation():
    effective = [{"product_id": "7", "action": "pick", "before": ["Apparel", "Topwear", "Shirts"],
                  "after": ["Footwear", "Shoes", "Casual"], "reviewer": "ana", "at": "2026-12-05T10:00:00Z",
                  "decision": 1},
                 {"product_id": "8", "action": "confirm", "before": ["Apparel", "Topwear", "Tshirts"],
                  "after": ["Apparel", "Topwear", "Tshirts"], "reviewer": "ben", "at": "2026-12-05T10:01:00Z",
                  "decision": 2}]
    table = corrections_table(effective, LEVELS)
    assert table[["id", "level", "old", "new"]].values.tolist() == [
        ["7", "top", "Apparel", "Footwear"], ["7", "mid", "Topwear", "Shoes"], ["7", "leaf", "Shirts", "Casual"],
        ["8", "", "Apparel > Topwear > Tshirts", "Apparel > Topwear > Tshirts"]]


def test_the_platform_s_station_waits_for_the_first_run_then_serves_runs_latest(tmp_path):
    """`review serve --home`: started with the platform, before any run has made a taxonomy."""
    import shutil

    from components.review.cli import wait_for_run
    from tests.conftest import ROOT

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "params.yaml", home / "params.yaml")  # a project checkout: params, no run yet
    run = home / "runs" / "run-1"

    def first_run() -> None:
        (run / "artifacts" / "features").mkdir(parents=True)
        shutil.copy(ROOT / "params.yaml", run / "params.yaml")
        (run / "artifacts" / "features" / "encoders.json").write_text("{}")
        (home / "runs" / "latest").symlink_to("run-1")

    timer = threading.Timer(0.3, first_run)
    timer.start()
    try:
        assert wait_for_run(home, poll_seconds=0.05) == (run.resolve(), None)  # resolved: pruning cannot pull it away
    finally:
        timer.cancel()
