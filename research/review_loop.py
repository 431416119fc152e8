"""Does the review loop pay? Plant mislabels in the train split, let a scripted reviewer work the audit's queue
through the review station's HTTP API, export, retrain, and measure on the test split (printed, never asserted).

    .venv/bin/python research/review_loop.py WORKSPACE [--sizes 100 200 400] [--seed 0] [--out DIR]

WORKSPACE: a workspace after a full `dvc repro` (its trained experts, ingest and features outputs are read,
never written). In a scratch copy of it:
1. clean: its own TF-IDF expert and stack, scored on the test split;
2. noisy: 2 % of the train split's products re-filed to a sibling articleType and 1 % to a random one (the
   audit benchmark's own `plant_label_flips`), the TF-IDF expert and the stack retrained on that;
3. the audit (the stage's `audit_products`) runs on the noisy catalog and its suspects are queued in a fresh
   review station (`deepfusion review`'s own app, served over loopback); a scripted reviewer takes the next
   item through `POST /api/queues/audit/next` and decides it with the true label (confirm when the current
   label is right, accept when the first suggestion is, else pick the true path); after each N reviews the
   corrections are exported (`deepfusion review export`'s code), applied as ingest applies them, and the
   TF-IDF expert and the stack are retrained and scored.
Only the TF-IDF expert and the stack are retrained: the image, text, metadata and fusion experts stay the
ones trained on the clean catalog, so the noisy rows understate the damage and the table understates what the
corrections recover. Test labels are never touched; the stack learns on the validation split as in the pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.catalog import FINEST, read_corrections  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import cached_products  # noqa: E402
from components.encoders import encode_labels, load_encoders  # noqa: E402
from components.label_noise import plant_label_flips  # noqa: E402

PASSWORD = "review-loop benchmark"


def scratch(workspace: Path, tmp: Path) -> None:
    """A workspace that reads the trained neural experts and the data from WORKSPACE and writes its own
    products, TF-IDF expert, audit, stack, review database and corrections."""
    shutil.copy(workspace / "params.yaml", tmp / "params.yaml")
    (tmp / "data").symlink_to((workspace / "data").resolve())
    art, src = tmp / "artifacts", workspace / "artifacts"
    for d in ("ingest", "audit", "train_baseline", "stack"):
        (art / d).mkdir(parents=True)
    (art / "ingest" / "images.npy").symlink_to((src / "ingest" / "images.npy").resolve())
    for d in ("features", "train_fusion"):
        (art / d).symlink_to((src / d).resolve())
    for d in ("image", "text", "metadata"):
        (art / "train_baseline" / d).symlink_to((src / "train_baseline" / d).resolve())
    pd.DataFrame({"id": pd.Series(dtype=str), "reason": pd.Series(dtype=str)}).to_csv(art / "audit" / "exclude.csv",
                                                                                      index=False)


def train_tfidf(params, products: pd.DataFrame, keep: Path) -> float:
    """Retrain the TF-IDF expert on these labels (it reads only ingest and features: no neural expert needed),
    kept in `keep` for the stack later; returns its seconds."""
    from components.pipeline import train_baseline

    products.to_parquet(Path(params.paths.ingest) / "products.parquet", index=False)
    t0 = time.perf_counter()
    train_baseline.run(params, "tfidf")
    shutil.move(Path(params.paths.train_baseline) / "tfidf", keep)
    return time.perf_counter() - t0


def stack_and_score(params, products: pd.DataFrame, tfidf: Path) -> dict:
    """With that TF-IDF expert in place, retrain the stack and score both on the test split."""
    from components.pipeline import stack

    products.to_parquet(Path(params.paths.ingest) / "products.parquet", index=False)
    target = Path(params.paths.train_baseline) / "tfidf"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tfidf, target)
    t0 = time.perf_counter()
    stack.run(params)
    seconds = time.perf_counter() - t0
    return {**score(params), "stack_seconds": seconds}


def tfidf_alone(params, products: pd.DataFrame, tfidf: Path) -> dict:
    """The retrained TF-IDF expert by itself on the test split (what phase 1 can say before any stack)."""
    from components.models.tfidf import load_tfidf
    from components.pipeline.evaluate import article_view

    enc = load_encoders(params.paths.features)
    test = products[products["split"] == "test"].reset_index(drop=True)
    y = encode_labels(test, enc)[:, FINEST]
    probs = load_tfidf(tfidf / "model.npz").predict_proba(test, [len(v) for v in enc.labels.values()])
    return article_view(y, probs[FINEST].argmax(1))


def wait_for_experts(workspace: Path, params) -> None:
    """The neural experts and the stack of WORKSPACE (a run may still be training them: phase 1 does not
    need them, so the benchmark can start beside the run)."""
    needed = [workspace / params.paths.stack / "combiner.json", workspace / params.paths.train_fusion]
    told = False
    while not all(p.exists() for p in needed):
        if not told:
            print(f"waiting for {', '.join(str(p) for p in needed if not p.exists())}", flush=True)
            told = True
        time.sleep(30)


def score(params) -> dict:
    """The stack (as the evaluate stage loads it) and the TF-IDF expert on the test split, articleType."""
    from components.pipeline.evaluate import EXPERT_ROWS, article_view, load_stack, variant_predictions

    experts, cat, spec = load_stack(params)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    idx = np.flatnonzero(df["split"].to_numpy() == "test")
    frame, images = cached_products(params.paths.ingest, idx)
    y = encode_labels(frame, experts.encoders)[:, FINEST]
    probs, decisions, _ = variant_predictions(experts, cat, spec, frame, images, "full", params.stack.cut_title_words,
                                              ablations=False)
    tfidf_row = EXPERT_ROWS["tfidf"]
    return {"stacked": article_view(y, decisions["stacked"][:, FINEST]),
            "tfidf": article_view(y, probs[tfidf_row][FINEST].argmax(1))}


def plant_in_train(products: pd.DataFrame, seed: int) -> pd.DataFrame:
    train = products[products["split"] == "train"].reset_index(drop=True)
    flipped = plant_label_flips(train, 0.02, 0.01, seed).set_index("id")
    out = products.set_index("id")
    levels = ["masterCategory", "subCategory", "articleType"]
    out.loc[flipped.index, levels] = flipped[levels]
    out["noise"] = ""
    out.loc[flipped.index, "noise"] = flipped["noise"]
    return out.reset_index()


class Station:
    """The review app of this scratch workspace, served over loopback in a thread (werkzeug, real HTTP)."""

    def __init__(self, params, store) -> None:
        from werkzeug.serving import make_server

        from components.review.cli import create

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = make_server("127.0.0.1", port, create(params, store), threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.call("/api/token", {"user": "scripted", "password": PASSWORD})["token"]

    def call(self, path: str, body: dict | None = None) -> dict | None:
        req = urllib.request.Request(self.base + path, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"}
                                                 if getattr(self, "token", None) else {})})
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        return json.loads(data) if data else None


def review(station: Station, truth: dict[str, list[str]], n: int) -> dict:
    """The scripted reviewer decides the next n items with the true labels; counts what it did."""
    done = {"confirm": 0, "accept": 0, "pick": 0, "real_flips": 0}
    for _ in range(n):
        item = station.call("/api/queues/audit/next", {})
        if item is None:
            break
        true = truth[item["product_id"]]
        if item["current_path"] == true:
            action = {"action": "confirm"}
        elif item["suggestions"] and item["suggestions"][0]["path"] == true:
            action = {"action": "accept"}
        else:
            action = {"action": "pick", "path": true}
        done["real_flips"] += item["current_path"] != true
        station.call(f"/api/items/{item['id']}/decision", {**action, "version": item["version"]})
        done[action["action"]] += 1
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the scratch workspace here (default: a temporary folder)")
    ap.add_argument("--tfidf-only", action="store_true",
                    help="stop after phase 1: the TF-IDF experts alone (no trained neural experts needed)")
    args = ap.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per review call otherwise
    workspace = args.workspace.resolve()
    tmp = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="review-loop-"))
    tmp.mkdir(parents=True, exist_ok=True)
    scratch(workspace, tmp)
    os.chdir(tmp)
    os.environ.pop("DEEPFUSION_REVIEW_DB", None)  # the scratch workspace's own SQLite database
    params = load_params()
    levels = list(params.catalog.levels)
    clean = pd.read_parquet(workspace / params.paths.ingest / "products.parquet")
    truth = {str(r[0]): list(r[1:]) for r in clean[["id", *levels]].astype(str).itertuples(index=False)}
    rows = []

    def report(name: str, r: dict, extra: str = "") -> None:
        rows.append({"condition": name, **r})
        print(f"{name:>22}: stacked acc {r['stacked']['accuracy']:.4f} macro-F1 {r['stacked']['macro_f1']:.4f} | "
              f"TF-IDF acc {r['tfidf']['accuracy']:.4f} macro-F1 {r['tfidf']['macro_f1']:.4f} "
              f"(retrain {r.get('retrain_seconds', 0):.0f} s){extra}", flush=True)

    from components.atomic_io import read_json
    from components.pipeline.audit import audit_products
    from components.pipeline.ingest import apply_corrections
    from components.review import queues
    from components.review.cli import export
    from components.review.store import open_store

    # Phase 1 (ingest and features only): plant, audit, review, export, and one TF-IDF expert per condition.
    noisy = plant_in_train(clean, args.seed)
    planted = int((noisy["noise"] != "").sum())
    base = noisy.drop(columns="noise")
    conditions = {"noisy": (base, {})}
    enc = load_encoders(params.paths.features)
    images = np.load(Path(params.paths.ingest) / "images.npy", mmap_mode="r")
    t0 = time.perf_counter()
    res = audit_products(base, images, enc, params.audit, params.train_baseline.tfidf, tuple(enc.categorical),
                         params.seed)
    ids = base["id"].astype(str).to_numpy()
    oof = {"ids": ids, **{f"pooled_{lvl}": res.pooled[i] for i, lvl in enumerate(enc.levels)}}
    sus = res.table[res.table["suspect"]]
    sus_flips = int(noisy.set_index(noisy["id"].astype(str)).loc[sus["id"].astype(str), "noise"].ne("").sum())
    print(f"{planted} train labels flipped; audit of the noisy catalog: {len(sus)} suspects ({sus_flips} of them "
          f"planted flips) in {time.perf_counter() - t0:.0f} s", flush=True)
    base.to_parquet(Path(params.paths.ingest) / "products.parquet", index=False)  # the catalog the station shows
    store = open_store(params)
    store.add_user("scripted", PASSWORD, "reviewer")
    items = queues.audit_items(params, res.table, oof, read_json(Path(params.paths.features) / "encoders.json"),
                               base, "benchmark", Path(params.paths.raw).resolve())
    store.enqueue(items)
    station = Station(params, store)
    reviewed, tally = 0, {"confirm": 0, "accept": 0, "pick": 0, "real_flips": 0}
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        for k, v in review(station, truth, n - reviewed).items():
            tally[k] += v
        reviewed = n
        seconds = time.perf_counter() - t0
        table = export(params, store, Path(params.paths.corrections))
        corrected, rep = apply_corrections(base, read_corrections(params.paths.corrections, params.catalog),
                                           tuple(levels))
        conditions[f"after {n} reviews"] = (corrected, {
            "reviews": n, **tally, "corrected_products": rep["corrected_products"],
            "corrected_levels": int((table["level"] != "").sum()), "confirmed_products": rep["confirmed_products"],
            "review_seconds_over_http": round(seconds, 2)})
    station.server.shutdown()
    tfidf_seconds = {}
    shutil.copytree(workspace / params.paths.train_baseline / "tfidf", tmp / "tfidf" / "clean")
    alone = {"clean": tfidf_alone(params, clean, tmp / "tfidf" / "clean")}
    for name, (frame, _) in conditions.items():
        tfidf_seconds[name] = train_tfidf(params, frame, tmp / "tfidf" / name.replace(" ", "_"))
        alone[name] = tfidf_alone(params, clean, tmp / "tfidf" / name.replace(" ", "_"))
        print(f"TF-IDF expert for {name}: {tfidf_seconds[name]:.0f} s; alone on the test split: accuracy "
              f"{alone[name]['accuracy']:.4f}, macro-F1 {alone[name]['macro_f1']:.4f}", flush=True)
    print(f"clean TF-IDF expert (the workspace's) alone: accuracy {alone['clean']['accuracy']:.4f}, macro-F1 "
          f"{alone['clean']['macro_f1']:.4f}", flush=True)
    (tmp / "review_loop_tfidf.json").write_text(json.dumps(
        {name: {**alone[name], **(conditions[name][1] if name in conditions else {})} for name in alone}, indent=1))
    if args.tfidf_only:
        return

    # Phase 2 (the trained experts): the clean stack as the run made it, then one stack per condition.
    wait_for_experts(workspace, params)
    shutil.rmtree(tmp / params.paths.stack)
    shutil.copytree(workspace / params.paths.stack, tmp / params.paths.stack)
    clean.to_parquet(Path(params.paths.ingest) / "products.parquet", index=False)
    shutil.copytree(tmp / "tfidf" / "clean", Path(params.paths.train_baseline) / "tfidf")
    report("clean", score(params))
    for name, (frame, extra) in conditions.items():
        r = stack_and_score(params, frame, tmp / "tfidf" / name.replace(" ", "_"))
        r["retrain_seconds"] = tfidf_seconds[name] + r.pop("stack_seconds")
        note = "" if not extra else (f"; {extra['real_flips']}/{extra['reviews']} reviewed were planted flips, "
                                     f"{extra['corrected_products']} products corrected ({extra['corrected_levels']} "
                                     f"levels), {extra['confirmed_products']} confirmed; reviewing took "
                                     f"{extra['review_seconds_over_http']:.1f} s over HTTP")
        report(name, r, note)
        rows[-1].update(extra)
    c, noisy_row = rows[0]["stacked"]["accuracy"], rows[1]["stacked"]["accuracy"]
    for r in rows[2:]:
        rec = (r["stacked"]["accuracy"] - noisy_row) / r["reviews"] * 100
        print(f"after {r['reviews']}: stacked accuracy recovered {100 * rec:.2f} points per 100 reviews "
              f"(of the {100 * (c - noisy_row):.2f} lost to the noise); TF-IDF "
              f"{100 * (r['tfidf']['accuracy'] - rows[1]['tfidf']['accuracy']) / r['reviews'] * 100:.2f} per 100")
    (tmp / "review_loop.json").write_text(json.dumps(rows, indent=1))
    print(f"table: {tmp / 'review_loop.json'}")


if __name__ == "__main__":
    main()
