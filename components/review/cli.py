"""`deepfusion review`: the review station.

    deepfusion review user NAME [--admin]        add a user (or reset one's password; asked on the terminal,
                                                 or DEEPFUSION_REVIEW_PASSWORD)
    deepfusion review import audit               queue the last audit's suspects
    deepfusion review import categorize OUT [--batch DIR]  queue a categorize run's review_queue.csv (the
                                                 categorize DAG does it itself)
    deepfusion review import ids FILE            queue the products listed in FILE (one id per line)
    deepfusion review serve [--port 8010]        the web app (127.0.0.1 unless --host; no TLS of its own)
    deepfusion review export [--output FILE]     the standing corrections and confirmations as a CSV for ingest

The database: params paths.review/review.db (SQLite), or DEEPFUSION_REVIEW_DB (e.g. postgresql+psycopg2://...).
"""
from __future__ import annotations

import argparse
import csv
import getpass
import io
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pandas as pd

from components.atomic_io import atomic_write_bytes, read_json
from components.catalog import CORRECTION_COLUMNS, PATH_SEP, read_catalog
from components.config import Params, load_params
from components.review import queues
from components.review.store import ReviewError, Store, open_store

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHAMPION_POLL_SECONDS = 60.0  # how soon a station without the workers' disk notices a new champion


def secret_key(params: Params) -> bytes:
    """DEEPFUSION_REVIEW_SECRET, or a random key kept (owner-only) beside the database: sessions survive a
    restart, and nobody who cannot read that folder can forge one."""
    env = os.environ.get("DEEPFUSION_REVIEW_SECRET", "")
    if env:
        return env.encode()
    path = Path(params.paths.review) / "secret.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _products(params: Params) -> pd.DataFrame:
    path = Path(params.paths.ingest) / "products.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ingested catalog; run `dvc repro ingest`")
    return pd.read_parquet(path)


def corrections_table(effective: list[dict], levels: list[str]) -> pd.DataFrame:
    """Standing decisions -> correction rows: each changed level of an accepted or picked path, and each
    confirmation (the person kept the label: ingest records it, the audit leaves the product out)."""
    rows = []
    for d in effective:
        common = {"id": d["product_id"], "action": d["action"], "reviewer": d["reviewer"], "time": d["at"],
                  "decision": d["decision"]}
        if d["action"] == "confirm":
            path = PATH_SEP.join(d["after"])
            rows.append({**common, "level": "", "old": path, "new": path})
            continue
        before = d["before"] or [""] * len(levels)
        for lvl, old, new in zip(levels, before, d["after"], strict=True):
            if old != new:
                rows.append({**common, "level": lvl, "old": old, "new": new})
    return pd.DataFrame(rows, columns=CORRECTION_COLUMNS)


def export(params: Params, store: Store, output: Path) -> pd.DataFrame:
    table = corrections_table(store.effective(), list(params.catalog.levels))
    buf = io.StringIO()
    table.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, buf.getvalue().encode())
    return table


def _has_taxonomy(ws: Path) -> bool:
    return (ws / "params.yaml").is_file() and (ws / load_params(ws).paths.features / "encoders.json").is_file()


class ChampionSource(Protocol):
    """The champion's run for a station that shares no disk with the workers
    (components.orchestration.champion_run.StationChampion, wired in by components.cli)."""

    def current(self) -> tuple[Path, dict] | None: ...

    def newer(self, shown: dict) -> dict | None: ...


def wait_for_run(home: Path, poll_seconds: float = 10.0, champion: ChampionSource | None = None
                 ) -> tuple[Path, dict | None]:
    """The workspace whose products and taxonomy the station shows, and the champion pointer it came from (None
    for a local run). The platform's last finished run (HOME/runs/latest, resolved: a later run's pruning of old
    workspaces does not pull it away), else HOME itself; else, on a host that shares no disk with the workers
    (compose), the champion's run rebuilt from the artifact store. Waits while none has one."""
    told = False
    while True:
        for ws in (home / "runs" / "latest", home):
            if _has_taxonomy(ws):
                return ws.resolve(), None
        try:
            found = champion.current() if champion is not None else None
            if found is not None and _has_taxonomy(found[0]):
                return found
        except Exception as exc:  # noqa: BLE001 (the store may be down or the pull cut: said, then retried)
            print(f"review station: the champion's run cannot be fetched yet ({type(exc).__name__}: {exc})",
                  flush=True)
        if not told:
            print(f"review station: waiting for a run in {home} (no taxonomy yet: the first retrain makes it)",
                  flush=True)
            told = True
        time.sleep(poll_seconds)


def follow_champion(champion: ChampionSource, shown: dict, poll_seconds: float = CHAMPION_POLL_SECONDS
                    ) -> threading.Thread:
    """Watch the champion; when another version becomes champion, rebuild its run first, then stop the server
    (SIGTERM: gunicorn finishes the requests in flight) so that the supervisor (compose's restart policy) starts
    the station again on the new run. Reviewers' decisions live in the database: nothing is lost."""
    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            try:
                pointer = champion.newer(shown)
            except Exception as exc:  # noqa: BLE001 (retried at the next poll; the current run stays served)
                log.warning("review station: checking the champion failed (%s); retrying", exc)
                continue
            if pointer is None:
                continue
            print(f"review station: {shown['model']} v{pointer['version']} is the champion now (was "
                  f"v{shown['version']}): restarting on its run", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            return

    thread = threading.Thread(target=watch, name="follow-champion", daemon=True)
    thread.start()
    return thread


def create(params: Params, store: Store, secret: bytes | None = None):
    from components.review.app import create_app
    from components.review.catalog_index import CatalogIndex

    levels = list(params.catalog.levels)
    encoders = Path(params.paths.features) / "encoders.json"
    if not encoders.is_file():
        raise FileNotFoundError(f"{encoders}: no taxonomy yet; run `dvc repro features`")
    taxonomy = read_json(encoders)["taxonomy"]
    products = _products(params)
    root = Path(params.paths.raw).resolve()

    def upload(ids: list[str], source: str) -> tuple[int, list[str]]:
        items, unknown = queues.upload_items(ids, products, levels, source, root, params)
        added, _ = store.enqueue(items)
        return added, unknown

    def open_search():
        """The served model (the pipeline's stack) and its search index (`deepfusion search --build`)."""
        from components.models.retrieval import towers_file
        from components.serving.predict import default_model
        from components.serving.search import open_searcher

        return open_searcher(default_model(), search_dir=params.paths.search,
                             towers=towers_file(params.paths.train_retrieval))

    return create_app(store, levels, taxonomy, secret_key=secret or secret_key(params),
                      session_minutes=params.review.session_minutes,
                      index=CatalogIndex(products, levels, root, open_search),
                      upload=upload, secure_cookie=os.environ.get("DEEPFUSION_REVIEW_SECURE_COOKIE") == "1")


def main(argv: list[str] | None = None, champion: Callable[[Path, str], ChampionSource] | None = None) -> int:
    """`champion(home, model)`: how `serve --home` reaches the champion's run without the workers' disk."""
    ap = argparse.ArgumentParser(prog="deepfusion review", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    u = sub.add_parser("user", help="add a user or reset one's password")
    u.add_argument("name")
    u.add_argument("--admin", action="store_true", help="may upload id lists and read the decision trail")
    imp = sub.add_parser("import", help="queue items")
    imp.add_argument("kind", choices=["audit", "categorize", "ids"])
    imp.add_argument("path", nargs="?", type=Path, help="categorize: the run's output folder; ids: the id file")
    imp.add_argument("--source", help="ids: the list's name in the queue (default: the file name)")
    imp.add_argument("--batch", type=Path, help="categorize: the batch folder its photos are in (landing/_done/..)")
    srv = sub.add_parser("serve", help="the review web app")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8010)
    srv.add_argument("--public", action="store_true", help="allow a non-loopback --host (put TLS in front)")
    srv.add_argument("--home", type=Path, help="serve the last run of this platform home (HOME/runs/latest, else "
                     "HOME), waiting until one has a taxonomy (the platform's service starts before any run)")
    ex = sub.add_parser("export", help="write the corrections file ingest applies")
    ex.add_argument("--output", type=Path, help="default: params paths.corrections")
    args = ap.parse_args(argv)
    params = load_params()
    try:
        store = open_store(params)
        if args.action == "user":
            password = os.environ.get("DEEPFUSION_REVIEW_PASSWORD") or getpass.getpass(f"password for {args.name}: ")
            store.add_user(args.name, password, "admin" if args.admin else "reviewer")
            print(f"user {args.name} ({'admin' if args.admin else 'reviewer'}) saved")
        elif args.action == "import":
            levels = list(params.catalog.levels)
            if args.kind == "audit":
                items = queues.read_audit(params)
            elif args.path is None:
                ap.error(f"import {args.kind} needs a PATH")
            elif args.kind == "categorize":
                review = pd.read_csv(args.path / "review_queue.csv", dtype={"id": str}, keep_default_na=False)
                batch = (args.batch or args.path).resolve()
                items = queues.categorize_items(review, levels, args.path.name, batch,
                                                read_catalog(batch, params.catalog, require_labels=False).frame
                                                if args.batch else None)
            else:
                items, unknown = queues.upload_items(args.path.read_text(encoding="utf-8").split(),
                                                     _products(params), levels, args.source or args.path.name,
                                                     Path(params.paths.raw).resolve(), params)
                if unknown:
                    print(f"not in the catalog (left out): {', '.join(unknown[:20])}", file=sys.stderr)
            added, already = store.enqueue(items)
            print(f"queued {added} item(s) ({already} already queued)")
        elif args.action == "export":
            out = args.output or Path(params.paths.corrections)
            table = export(params, store, out)
            print(f"{out}: {int((table['level'] != '').sum())} corrected level(s), "
                  f"{int((table['level'] == '').sum())} confirmation(s); `dvc repro` applies them in ingest")
        else:
            if args.host not in LOOPBACK and not args.public:
                print(f"error: --host {args.host} serves the review app to the network without TLS; add --public "
                      "when a TLS proxy stands in front", file=sys.stderr)
                return 2
            secret = secret_key(params)  # the home's key (or env): sessions outlive the run shown
            if args.home is not None:
                home = args.home.resolve()
                source = champion(home, load_params(home).registry.model_name) if champion else None
                workspace, pointer = wait_for_run(home, champion=source)
                os.chdir(workspace)
                params = load_params()
                print(f"review station: the catalog of {workspace}"
                      + (f" ({pointer['model']} v{pointer['version']}, the champion)" if pointer else ""), flush=True)
                if pointer and source:
                    follow_champion(source, pointer)
            app = create(params, store, secret)
            print(f"review station: http://{args.host}:{args.port}/", flush=True)
            from components.review.app import serve

            serve(app, args.host, args.port)
    except (ReviewError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
