"""The review web app (the only module that touches Flask): server-rendered pages for reviewers and an HTTP API
for tools, over one Store.

Pages use a signed session cookie (HttpOnly, SameSite=Lax) that expires `session_minutes` after login, checked
on the server, and every form carries a CSRF token (Flask-WTF). The API takes a bearer token from
POST /api/token (signed, same lifetime), never the cookie, so a page elsewhere cannot act through it. Every asset
is served from this package; the Content-Security-Policy forbids anything else.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import threading
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from components.images import ImageError, ImagePathError, read_image_file
from components.review.catalog_index import CatalogIndex, SearchUnavailable
from components.review.store import ACTIONS, QUEUES, ReviewError, StaleItem, Store

HERE = Path(__file__).resolve().parent
SEP = " > "
CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def create_app(store: Store, levels: list[str], taxonomy: list[list[str]], *, secret_key: bytes,
               session_minutes: float = 480.0, index: CatalogIndex | None = None,
               upload: Callable[[list[str], str], tuple[int, list[str]]] | None = None,
               secure_cookie: bool = False) -> Flask:
    """`index`: example products per path (thumbnails beside an item); `upload(ids, source)`: queue an admin's
    id list, returns (queued, unknown ids)."""
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config.update(SECRET_KEY=secret_key, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=secure_cookie, WTF_CSRF_TIME_LIMIT=None,
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=session_minutes),
                      # The cookie is written only when the session changes: refreshed on every request, a photo
                      # request that started before a form's POST would put back the session as it was and
                      # drop the message (or token) the POST stored. Expiry is the server's own check anyway.
                      SESSION_REFRESH_EACH_REQUEST=False,
                      MAX_CONTENT_LENGTH=4 * 2**20)
    csrf = CSRFProtect(app)
    tokens = URLSafeTimedSerializer(secret_key, salt="deepfusion-review-api")
    throttle = LoginThrottle()
    paths = {tuple(p) for p in taxonomy}
    path_texts = sorted(SEP.join(p) for p in taxonomy)
    lifetime = session_minutes * 60

    def parse_path(text: str | list) -> list[str]:
        parts = text if isinstance(text, list) else str(text).split(SEP.strip())
        return [str(p).strip() for p in parts]

    # --- who is asking ---------------------------------------------------------------------------------------

    def page_user() -> str | None:
        user, expires = session.get("user"), session.get("expires", 0)
        if user and _clock() < expires and store.role(user):
            return user
        if user:
            session.clear()
            flash("Your session expired; log in again.")
        return None

    def login_required(view):
        @wraps(view)
        def wrapped(*a, **kw):
            user = page_user()
            if user is None:
                return redirect(url_for("login", next=request.path))
            g.user, g.role = user, store.role(user)
            return view(*a, **kw)
        return wrapped

    def admin_required(view):
        @wraps(view)
        def wrapped(*a, **kw):
            if g.role != "admin":
                abort(403)
            return view(*a, **kw)
        return login_required(wrapped)

    def api_user() -> str:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            abort(_json(401, "send Authorization: Bearer <token> (POST /api/token with user and password)"))
        try:
            user = tokens.loads(auth.removeprefix("Bearer "), max_age=lifetime)["user"]
        except SignatureExpired:
            abort(_json(401, "token expired; get a new one from POST /api/token"))
        except (BadSignature, KeyError, TypeError):
            abort(_json(401, "invalid token"))
        if not store.role(user):
            abort(_json(401, "user no longer active"))
        return user

    def _json(status: int, message: str, **extra) -> Response:
        resp = jsonify({"error": message, **extra})
        resp.status_code = status
        return resp

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cache-Control"] = "no-store" if resp.mimetype != "image/jpeg" else "private, max-age=3600"
        return resp

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return render_template("error.html", message=f"The form was refused: {exc.description} Reload the page "
                                                     "and try again."), 400

    # --- pages -----------------------------------------------------------------------------------------------

    @app.get("/login")
    def login():
        return render_template("login.html", next=request.args.get("next", "/"))

    @app.post("/login")
    def login_post():
        name = request.form.get("user", "")
        wait = throttle.wait_seconds(name, request.remote_addr or "")
        if wait:
            flash(f"Too many failed logins: try again in {(wait + 59) // 60} minute(s).")
            return render_template("login.html", next=request.form.get("next", "/")), 429, {"Retry-After": str(wait)}
        who = store.login(name, request.form.get("password", ""))
        if who is None:
            throttle.failed(name, request.remote_addr or "")
            flash("Unknown user or wrong password.")
            return render_template("login.html", next=request.form.get("next", "/")), 401
        throttle.succeeded(name)
        session.clear()  # a new session id for the new login (no fixation)
        session.permanent = True
        session.update(user=who["name"], expires=_clock() + lifetime)
        target = request.form.get("next", "/")
        return redirect(target if target.startswith("/") and not target.startswith("//") else "/")

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @login_required
    def home():
        return render_template("queues.html", counts=store.counts(), role=g.role, user=g.user)

    @app.get("/queue/<queue>")
    @login_required
    def next_in(queue: str):
        if queue not in QUEUES:
            abort(404)
        item = store.next_item(queue, g.user)
        if item is None:
            flash(f"The {queue} queue has nothing left for you.")
            return redirect(url_for("home"))
        return redirect(url_for("item_page", item_id=item.id))

    @app.get("/item/<int:item_id>")
    @login_required
    def item_page(item_id: int):
        try:
            item = store.item(item_id)
        except ReviewError:
            abort(404)
        held = item.lease_user not in (None, g.user) and item.lease_until and item.lease_until > _now_iso()
        shown = {"suggested": item.suggestions[0]["path"] if item.suggestions else [],
                 "current": item.current_path}
        ex = {k: (index.examples(p, 4) if index and p else []) for k, p in shown.items()}
        return render_template("item.html", item=item, levels=levels, held=held, paths=path_texts, sep=SEP,
                               examples=ex, user=g.user, role=g.role)

    @app.post("/item/<int:item_id>")
    @login_required
    def decide_page(item_id: int):
        action = request.form.get("action", "")
        try:
            version = int(request.form.get("version", ""))
            path = parse_path(request.form.get("path", "")) if action == "pick" else None
            result = store.decide(item_id, g.user, action, version, path, paths)
        except ValueError as exc:  # ReviewError and StaleItem are ValueErrors; a bad version number too
            flash(str(exc) if isinstance(exc, ReviewError) else "The form lacked its version; reload the item.")
            return redirect(url_for("item_page", item_id=item_id))
        flash(f"Item {item_id}: {result['action']}" + (f" → {SEP.join(result['after'])}"
                                                       if action in ("accept", "pick") else ""))
        return redirect(url_for("next_in", queue=store.item(item_id).queue))

    @app.post("/undo")
    @login_required
    def undo_page():
        try:
            result = store.undo(g.user)
        except ReviewError as exc:
            flash(str(exc))
            return redirect(request.referrer if _same_site(request.referrer) else url_for("home"))
        flash(f"Decision {result['undone']} undone.")
        return redirect(url_for("item_page", item_id=result["item"]))

    @app.post("/upload")
    @admin_required
    def upload_page():
        if upload is None:
            abort(404)
        source = (request.form.get("source") or "upload").strip()[:100]
        text = request.form.get("ids", "")
        if "file" in request.files and request.files["file"].filename:
            text += "\n" + request.files["file"].read().decode("utf-8", errors="replace")
        ids = [t for line in text.splitlines() for t in line.replace(",", " ").split()]
        if not ids:
            flash("No ids given: paste them (one per line) or choose a text file.")
            return redirect(url_for("home"))
        queued, unknown = upload(ids, source)
        flash(f"{queued} item(s) queued from {source!r}" + (f"; not in the catalog: {', '.join(unknown[:20])}"
                                                           + (" ..." if len(unknown) > 20 else "") if unknown else ""))
        return redirect(url_for("home"))

    @app.get("/search")
    @login_required
    def search_page():
        return _search(request.args, None)

    @app.post("/search")
    @login_required
    def search_photo():
        photo = request.files.get("photo")
        data = photo.read() if photo is not None and photo.filename else None
        return _search(request.form, data)

    def _search(form, photo: bytes | None):
        """The search page: the form, and hits when a query came (words, a photo, or `like` a product)."""
        text, like = form.get("q", "").strip()[:200], form.get("like", "").strip()[:100]
        k = max(1, min(_int(form.get("k"), 24), 100))
        filters = {key[2:]: [v.strip() for raw in form.getlist(key) for v in raw.split(",") if v.strip()]
                   for key in form if key.startswith("f.")}
        filters = {c: v for c, v in filters.items() if v}
        hits, facets, error, status = None, {}, "", 200
        try:
            if index is None:
                raise SearchUnavailable("this station has no catalog index")
            facets = index.facets()
            if text or photo or like:
                hits = index.search(text, photo, like, filters, k)
        except SearchUnavailable as exc:
            error, status = f"Search is unavailable: {exc}", 503
        except ValueError as exc:  # nothing to search for, an unreadable photo, an unknown filter value
            error, status = str(exc), 400
        return render_template("search.html", q=text, like=like, k=k, filters=filters, facets=facets, hits=hits,
                               photo=photo is not None, error=error, levels=levels, user=g.user,
                               role=g.role), status

    @app.get("/trail")
    @admin_required
    def trail_page():
        return render_template("trail.html", rows=store.trail()[-500:][::-1], sep=SEP, user=g.user, role=g.role)

    @app.get("/image/<int:item_id>")
    @login_required
    def item_image(item_id: int):
        try:
            product = store.item(item_id).product
        except ReviewError:
            abort(404)
        return _image(product)

    @app.get("/example/<path:product_id>")
    @login_required
    def example_image(product_id: str):
        found = index.product(product_id) if index else None
        if found is None:
            abort(404)
        return _image(found)

    def _image(product: dict):
        if not product.get("image"):
            abort(404)
        try:
            data = read_image_file(Path(product["image_root"]), product["image"])
        except (ImagePathError, ImageError, OSError):
            abort(404)
        if data is None:
            abort(404)
        return send_file(io.BytesIO(data), mimetype="image/jpeg")

    # --- API ---------------------------------------------------------------------------------------------------

    @app.post("/api/token")
    @csrf.exempt
    def api_token():
        body = request.get_json(silent=True) or {}
        name = str(body.get("user", ""))
        wait = throttle.wait_seconds(name, request.remote_addr or "")
        if wait:
            resp = _json(429, f"too many failed logins: try again in {wait} s")
            resp.headers["Retry-After"] = str(wait)
            return resp
        who = store.login(name, str(body.get("password", "")))
        if who is None:
            throttle.failed(name, request.remote_addr or "")
            return _json(401, "unknown user or wrong password")
        throttle.succeeded(name)
        return jsonify({"token": tokens.dumps({"user": who["name"]}), "expires_in": int(lifetime)})

    @app.get("/api/queues")
    @csrf.exempt
    def api_queues():
        api_user()
        return jsonify(store.counts())

    @app.post("/api/queues/<queue>/next")
    @csrf.exempt
    def api_next(queue: str):
        user = api_user()
        if queue not in QUEUES:
            return _json(404, f"queue {queue!r}: expected one of {list(QUEUES)}")
        item = store.next_item(queue, user)
        return jsonify(item.__dict__) if item else ("", 204)

    @app.get("/api/items/<int:item_id>")
    @csrf.exempt
    def api_item(item_id: int):
        api_user()
        try:
            return jsonify(store.item(item_id).__dict__)
        except ReviewError as exc:
            return _json(404, str(exc))

    @app.post("/api/items/<int:item_id>/decision")
    @csrf.exempt
    def api_decide(item_id: int):
        user = api_user()
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _json(400, "send a JSON object: {action, version[, path]}")
        action = body.get("action")
        if action not in ACTIONS:
            return _json(400, f"action: expected one of {list(ACTIONS)}, got {action!r}")
        if not isinstance(body.get("version"), int):
            return _json(400, "version: the item's version you decided on (an integer) is required")
        path = body.get("path")
        if action == "pick" and not (isinstance(path, list) and all(isinstance(p, str) for p in path)):
            return _json(400, "path: a list of level values, coarsest first, is required for pick")
        try:
            return jsonify(store.decide(item_id, user, action, body["version"], path, paths))
        except StaleItem as exc:
            return _json(409, str(exc), item=store.item(item_id).__dict__)
        except ReviewError as exc:
            return _json(404 if "no such item" in str(exc) else 400, str(exc))

    @app.post("/api/search")
    @csrf.exempt
    def api_search():
        """{text?, photo_base64?, like?, filters?: {column: [values]}, k?} -> {hits: [...]}."""
        api_user()
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _json(400, "send a JSON object: {text, photo_base64, like, filters, k} (any of the first three)")
        filters = body.get("filters") or {}
        if not (isinstance(filters, dict) and all(isinstance(v, list) for v in filters.values())):
            return _json(400, "filters: an object of column -> list of values")
        try:
            photo = base64.b64decode(body["photo_base64"], validate=True) if body.get("photo_base64") else None
        except (binascii.Error, TypeError):
            return _json(400, "photo_base64: not base64")
        if index is None:
            return _json(503, "this station has no catalog index")
        try:
            hits = index.search(str(body.get("text") or "")[:200], photo, str(body.get("like") or "")[:100],
                                {str(c): [str(v) for v in vs] for c, vs in filters.items()},
                                max(1, min(_int(body.get("k"), 10), 100)))
        except SearchUnavailable as exc:
            return _json(503, f"search is unavailable: {exc}")
        except ValueError as exc:
            return _json(400, str(exc))
        return jsonify({"hits": hits})

    @app.post("/api/undo")
    @csrf.exempt
    def api_undo():
        user = api_user()
        try:
            return jsonify(store.undo(user))
        except StaleItem as exc:
            return _json(409, str(exc))
        except ReviewError as exc:
            return _json(400, str(exc))

    return app


class LoginThrottle:
    """Failed logins counted per user name and per client address over a sliding window; past the limit every
    attempt (right or wrong) is refused until the window moves on, so a password cannot be guessed at line
    speed. In memory: the station runs as one gunicorn process (threads), which sees every attempt."""

    def __init__(self, per_name: int = 5, per_address: int = 30, window_seconds: float = 900.0) -> None:
        self.limits = {"name": per_name, "address": per_address}
        self.window = window_seconds
        self.failures: dict[tuple[str, str], list[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: tuple[str, str], t: float) -> list[float]:
        times = [x for x in self.failures.get(key, []) if x > t - self.window]
        if times:
            self.failures[key] = times
        else:
            self.failures.pop(key, None)
        return times

    def wait_seconds(self, name: str, address: str) -> int:
        """0 when an attempt may be made, else how long until it may."""
        t = _clock()
        with self.lock:
            waits = [int(times[0] + self.window - t) + 1 for kind, key in (("name", name), ("address", address))
                     if len(times := self._recent((kind, key), t)) >= self.limits[kind]]
        return max(waits, default=0)

    def failed(self, name: str, address: str) -> None:
        t = _clock()
        with self.lock:
            for key in (("name", name), ("address", address)):
                self.failures.setdefault(key, []).append(t)

    def succeeded(self, name: str) -> None:
        with self.lock:
            self.failures.pop(("name", name), None)


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _clock() -> float:
    """Seconds now, for session expiry (the server's check, whatever a client keeps sending)."""
    return time.time()


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def _same_site(url: str | None) -> bool:
    return bool(url) and url.startswith(request.host_url)


def serve(app: Flask, host: str, port: int, threads: int = 8) -> None:
    """Gunicorn in this process: one worker (the store's connections are made after start), threads for the
    concurrent reviewers."""
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for k, v in {"bind": f"{host}:{port}", "workers": 1, "threads": threads, "worker_class": "gthread",
                         "accesslog": "-", "timeout": 60}.items():
                self.cfg.set(k, v)

        def load(self) -> Flask:
            return app

    _Server().run()
