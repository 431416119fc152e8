"""Speed and memory figures, each with a baseline measured in the same run (printed, never asserted).

    .venv/bin/python scripts/benchmark.py ingest    # full catalog: products/s, peak RSS; 1 vs N workers
    .venv/bin/python scripts/benchmark.py train [--repeats 3] [--models image fusion]  # products/s + peak RSS
    .venv/bin/python scripts/benchmark.py predict   # the predict CLI's path: stacked categorizer vs fusion alone
    .venv/bin/python scripts/benchmark.py review    # review station: view/decision latency, 10,000 items, 4 reviewers
    .venv/bin/python scripts/benchmark.py search    # query latency on one core: 44k to 1M products, filters,
                                                    # the previous scan as baseline; real queries if an index exists
    .venv/bin/python scripts/benchmark.py shards [--workspace DIR] [--products 4000] [--shards 4]
                                                    # categorize DAG: one process vs plan + shards + merge, each
                                                    # shard a fresh process as a mapped task is; per-shard overhead
    .venv/bin/python scripts/benchmark.py burst [--workspace DIR] [--batches 24] [--products 40]
                                                    # categorize DAG on a burst of small uploads: a task per upload
                                                    # vs the grouped tasks, each a fresh process
    .venv/bin/python scripts/benchmark.py model-load [--model models:/deepfusion@champion] [--repeats 5]
                                                    # a registered model loaded through MLFLOW_TRACKING_URI: with
                                                    # the worker's md5 cache warm vs downloading every artifact

Each measurement runs in a child process so peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter (cwd = repo root); it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


PEAK = "import resource; peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024"


def bench_ingest() -> None:
    results = {}
    for workers in (1, 2):
        tmp = tempfile.mkdtemp()
        results[workers] = child(f"""
import json, time, dataclasses
from components.config import load_params
from components.pipeline import ingest
p = load_params()
p = dataclasses.replace(p, paths=dataclasses.replace(p.paths, ingest="{tmp}/ingest"),
                        ingest=dataclasses.replace(p.ingest, workers={workers}))
t = time.perf_counter(); r = ingest.run(p); s = time.perf_counter() - t
{PEAK}
print(json.dumps({{"rows": r["summary"]["rows_in"], "seconds": s, "peak_mib": peak}}))""")
    base, fast = results[1], results[2]
    for w, r in results.items():
        print(f"ingest, {w} worker(s): {r['rows']} products in {r['seconds']:.1f} s = "
              f"{r['rows'] / r['seconds']:.0f} products/s, peak RSS {r['peak_mib']:.0f} MiB")
    print(f"speed-up of 2 workers over 1 (baseline, same run): {base['seconds'] / fast['seconds']:.2f}x")


def bench_train(batches: int = 40, repeats: int = 3, models: tuple[str, ...] = ("image", "text", "metadata", "fusion")
                ) -> None:
    """Training steps as the stages run them (components.training.loop.Trainer), fp32 vs bf16 autocast.

    A shared VM's speed drifts by tens of percent within minutes, so each ratio is taken between two adjacent
    runs (fp32 then bf16, the order swapped every repeat) and the median over `repeats` is the figure.
    """
    from components.models.runtime import cpu_bf16_native

    native, why = cpu_bf16_native()
    print(f"CPU: {cpu_model()}; native bf16: {'yes' if native else 'no'} ({why}); "
          f"train.cpu_precision auto -> {'bf16' if native else 'fp32'}")
    rows: dict[tuple[str, str], list[dict]] = {}
    # fp32 is the baseline for bf16 (same model, same batches). "text-dense" is the baseline for the sparse
    # n-gram tables (dense gradients + AdamW); "fusion-finetune" the one for training only the backbone's
    # last stage (the whole backbone trained).
    # "-stem64" is the baseline for model.stem_width: the same model with timm's 64-channel stem.
    extra = ([("text-dense", "auto")] * ("text" in models) + [("fusion-finetune", "auto")] * ("fusion" in models)
             + [(f"{m}-stem64", "auto") for m in ("image", "fusion") if m in models])
    for r in range(repeats):
        order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
        for which, prec in [(m, prec) for m in models for prec in order] + extra:
            rows.setdefault((which, prec), []).append(child(train_step_code(which, prec, batches)))
    med = {k: float(np.median([r["products_per_s"] for r in v])) for k, v in rows.items()}
    for (k, prec), v in rows.items():
        print(f"train {k:<15} {prec:<4}: {med[k, prec]:7.0f} products/s median of {len(v)} "
              f"(~{np.median([r['epoch_s'] for r in v]):.0f} s/epoch), "
              f"peak RSS {max(r['peak_mib'] for r in v):.0f} MiB")
    for m in models:
        ratios = [b["products_per_s"] / f["products_per_s"] for f, b in zip(rows[m, "fp32"], rows[m, "bf16"])]
        print(f"bf16 / fp32 {m:<9}: {np.median(ratios):.2f}x products/s (median of {len(ratios)} adjacent pairs, "
              f"range {min(ratios):.2f}-{max(ratios):.2f}; same batches)")
    auto = "bf16" if native else "fp32"
    if "text" in models:
        print(f"sparse n-gram tables: {med['text', auto] / med['text-dense', 'auto']:.2f}x the text model's "
              "throughput with dense gradients + AdamW")
    if "fusion" in models:
        print(f"fusion as configured: {med['fusion', auto] / med['fusion-finetune', 'auto']:.2f}x "
              "the throughput of fine-tuning the image backbone too")
    from components.config import load_params

    stem = load_params().model.stem_width
    for m in ("image", "fusion"):
        if m in models and stem:
            print(f"{m} with model.stem_width {stem}: {med[m, auto] / med[f'{m}-stem64', 'auto']:.2f}x the "
                  "throughput of timm's 64-channel stem")


def train_step_code(which: str, prec: str, batches: int) -> str:
    """A child program timing `batches` training steps of one model at one precision (after 3 warm-up steps)."""
    mods = ("image", "text", "metadata") if which.startswith("fusion") else (which.split("-")[0],)
    return f"""
import json, time, dataclasses, torch, numpy as np
from components.config import load_params
from components.data import load_arrays, split_arrays, iterate
from components.encoders import load_encoders
from components.models.fusion import ModelConfig, build_model
from components.training.loop import Trainer, seed_everything
p = load_params(); enc = load_encoders(p.paths.features)
if "{which}".endswith("-stem64"):
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, stem_width=0))
a, split = load_arrays(p.paths.ingest, p.paths.features)
train = split_arrays(a, split)["train"]
tp = (p.train_fusion if "{which}".startswith("fusion") else p.train_baseline).train
tp = dataclasses.replace(tp, cpu_precision="{prec}")
seed_everything(0)
m = build_model(ModelConfig.from_params(p.model, {mods!r}, **enc.model_sizes()))
# as the train_fusion stage runs it:
if "{which}" in ("fusion", "fusion-stem64") and p.train_fusion.finetune_image != "all":
    m.towers["image"].freeze_backbone(keep_last_stage=p.train_fusion.finetune_image == "last_stage")
if "{which}" == "text-dense":
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            mod.sparse = False
m.train()
trainer = Trainer(m, tp, {batches} + 3, 0, torch.device("cpu"))
it = iterate(train, tp.batch_size, torch.device("cpu"), True, np.random.default_rng(0), {batches} + 3)
n, t = 0, None
for i, b in enumerate(it):
    if i == 3: t = time.perf_counter()
    trainer.step(b)
    if i >= 3: n += len(b["tokens"])
s = time.perf_counter() - t
{PEAK}
print(json.dumps({{"products_per_s": n / s, "peak_mib": peak, "epoch_s": len(train) / (n / s)}}))"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.partition(':')[2].strip()} x {os.cpu_count()}"
    return "unknown"


def bench_predict(n: int = 3000) -> None:
    """`python -m components.predict`'s path (components.serving.predict.categorize: CSV parsing, JPEG
    decoding, features, models) on a catalog folder of `n` test products, the stacked categorizer against
    the fusion network alone, against itself with fp32 image towers (`models.quantize`), on worker threads
    instead of the CLI's forked worker processes, and on one worker holding every torch thread (the path
    before per-core workers); each run twice, interleaved, the better one kept (a shared VM's speed drifts)."""
    import pandas as pd

    from components.config import load_params

    p = load_params()
    ids = set(pd.read_parquet(f"{p.paths.ingest}/products.parquet", columns=["id", "split"])
              .query("split == 'test'")["id"].astype(str).head(n))
    with tempfile.TemporaryDirectory() as tmp:  # ~3,000 copied images: gone with the run
        folder = Path(tmp) / "catalog"
        (folder / "images").mkdir(parents=True)
        r = predict_child(p, ids, folder)
    print(f"predict on a catalog folder of {r['n']} test products (python -m components.predict's path: CSV, JPEG "
          f"decoding, features, models), CPU {cpu_model()}: stacked categorizer {r['stacked']:.0f} products/s; "
          f"fusion network alone {r['fusion']:.0f}/s; stacked = {r['stacked'] / r['fusion']:.2f}x fusion-only; "
          f"stacked with fp32 image towers {r['stacked_fp32']:.0f}/s (int8 towers {', '.join(r['int8']) or 'none'} = "
          f"{r['stacked'] / r['stacked_fp32']:.2f}x; same articleType on {100 * r['agree']:.2f} % of products); "
          f"stacked on worker threads instead of processes {r['stacked_threads']:.0f}/s (processes = "
          f"{r['stacked'] / r['stacked_threads']:.2f}x); "
          f"stacked on one worker with every core's threads {r['stacked_one_worker']:.0f}/s (per-core workers = "
          f"{r['stacked'] / r['stacked_one_worker']:.2f}x); "
          f"decoding alone {r['decode']:.0f}/s; peak RSS {r['peak_mib']:.0f} MiB, a forked worker process's "
          f"{r['worker_peak_mib']:.0f} MiB (the model's pages it shares with the parent included)")


def predict_child(p, ids: set[str], folder: Path) -> dict:
    """Copy the products `ids` of the raw export into `folder`, then time categorize() in a child process."""
    import pandas as pd

    for name in ("styles.csv", "products.csv"):
        raw = pd.read_csv(Path(p.paths.raw) / name, dtype=str, keep_default_na=False, on_bad_lines="skip")
        raw[raw["id"].isin(ids)].to_csv(folder / name, index=False)
    for pid in ids:
        src = Path(p.paths.raw) / "images" / f"{pid}.jpg"
        if src.is_file():
            (folder / "images" / src.name).write_bytes(src.read_bytes())
    return child(f"""
import json, time
from components.config import load_params
from components.checkpoint import fusion_checkpoint
from components.serving.categorizer import Categorizer, load_images
from components.serving.predict import categorize
from components.serving.stacked import StackedCategorizer
from components.catalog import read_catalog
p = load_params()
stack = p.paths.stack + "/combiner.json"
cats = {{"stacked": StackedCategorizer.load(stack, device="cpu"),
         "stacked_fp32": StackedCategorizer.load(stack, device="cpu", int8=False),
         "fusion": Categorizer.from_checkpoint(fusion_checkpoint(p.paths.train_fusion), device="cpu")}}
out, preds = {{"int8": list(cats["stacked"].experts.int8)}}, {{}}
# (model, workers, processes): the CLI's way is one single-threaded forked worker process per core (0, True);
# worker threads instead (0, False); one worker on every core (1, False)
runs = [("fusion", 0, True, ""), ("stacked", 0, True, ""), ("stacked_fp32", 0, True, ""),
        ("stacked", 0, False, "_threads"), ("stacked", 1, False, "_one_worker")]
for name, workers, processes, suffix in runs * 2:
    t = time.perf_counter()
    pred, _ = categorize("{folder}", cats[name], progress=False, workers=workers, processes=processes)
    out[name + suffix] = max(out.get(name + suffix, 0), len(pred) / (time.perf_counter() - t))
    preds[name] = pred[p.catalog.levels[-1]].to_numpy()
out["agree"] = float((preds["stacked"] == preds["stacked_fp32"]).mean())
frame = read_catalog("{folder}", p.catalog, require_labels=False).frame
t = time.perf_counter()
load_images(list(frame["image"]), *cats["fusion"].image_size, root="{folder}")
out["decode"], out["n"] = len(frame) / (time.perf_counter() - t), len(frame)
{PEAK}
out["peak_mib"] = peak
out["worker_peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))""")


REVIEW_SERVER = """
import sys
from components.review.app import create_app, serve
from components.review.store import Store
db, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store(db)
taxonomy = [["Apparel", "Topwear", f"Type{i}"] for i in range(117)]
for u in range(4):
    store.add_user(f"rev{u}", "benchmark password", "reviewer")
def suggestions(i):
    return [{"path": taxonomy[(i + k) % 117], "confidence": c} for k, c in ((1, 0.8), (2, 0.1), (3, 0.05))]
store.enqueue([{"queue": "audit", "source": "bench", "product_id": str(i), "rank": i / n,
                "current_path": taxonomy[i % 117], "suggestions": suggestions(i),
                "reason": "articleType: filed as x, the witnesses say y",
                "product": {"title": f"Product {i}", "image": "", "image_root": "/nonexistent",
                            "metadata": {"colour": "Red", "price": 999.0}}} for i in range(n)])
print("ready", flush=True)
serve(create_app(store, ["master", "sub", "article"], taxonomy, secret_key=b"b" * 32), "127.0.0.1", port, threads=8)
"""


def bench_review(items: int = 10_000, per_reviewer: int = 150) -> None:
    """The review station over loopback (gunicorn, SQLite): per item the API's lease-next, item view and
    decision, by 1 reviewer (the baseline) and by 4 at once; plus the weight of an item page."""
    import socket
    import threading
    import time
    import urllib.request

    def call(url: str, body: dict | None = None, token: str | None = None) -> tuple[float, bytes]:
        req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        return time.perf_counter() - t0, data

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = subprocess.Popen([sys.executable, "-c", REVIEW_SERVER, f"sqlite:///{tmp}/review.db", str(port),
                                 str(items)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            # The server's access log goes to that pipe: drained, or it fills and the server stops answering.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    call(f"{base}/login")
                    break
                except OSError:
                    time.sleep(0.2)
            tokens = [json.loads(call(f"{base}/api/token", {"user": f"rev{u}", "password": "benchmark password"})[1])
                      ["token"] for u in range(4)]

            def reviewer(token: str, n: int, out: dict) -> None:
                for _ in range(n):
                    t, data = call(f"{base}/api/queues/audit/next", {}, token)
                    item = json.loads(data)
                    out["next"].append(t)
                    t, _ = call(f"{base}/api/items/{item['id']}", token=token)
                    out["view"].append(t)
                    t, _ = call(f"{base}/api/items/{item['id']}/decision",
                                {"action": "accept", "version": item["version"]}, token)
                    out["decide"].append(t)

            rows = {}
            for label, k in (("1 reviewer (baseline)", 1), ("4 reviewers at once", 4)):
                out = {"next": [], "view": [], "decide": []}
                threads = [threading.Thread(target=reviewer, args=(tokens[i], per_reviewer, out)) for i in range(k)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                rows[label] = {op: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3) for op, v in out.items()}
                rows[label]["items/s"] = k * per_reviewer / wall
            print(f"review station, {items:,} queued items, {per_reviewer} items per reviewer, {cpu_model()}")
            for label, r in rows.items():
                print(f"  {label}: lease-next p50 {r['next'][0]:.1f} / p99 {r['next'][1]:.1f} ms, "
                      f"item view {r['view'][0]:.1f} / {r['view'][1]:.1f} ms, decision {r['decide'][0]:.1f} / "
                      f"{r['decide'][1]:.1f} ms, {r['items/s']:.1f} items/s")
            one, four = rows["1 reviewer (baseline)"], rows["4 reviewers at once"]
            print(f"  4 vs 1 reviewer: decision p50 x{four['decide'][0] / one['decide'][0]:.2f}, "
                  f"throughput x{four['items/s'] / one['items/s']:.2f}")
            html = item_page(base)
            css = len(call(f"{base}/static/review.css")[1])
            js = len(call(f"{base}/static/review.js")[1])
            print(f"  page weight: item page {len(html) / 1024:.1f} KiB (with the 117-path picker) + review.css "
                  f"{css / 1024:.1f} KiB + review.js {js / 1024:.1f} KiB; no other asset (photos apart)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def item_page(base: str) -> bytes:
    """A reviewer's item page through the browser path: login form with its CSRF token, then the next item."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    token = re.search(rb'name="csrf_token" value="([^"]+)"', opener.open(f"{base}/login").read()).group(1).decode()
    form = urllib.parse.urlencode({"user": "rev0", "password": "benchmark password", "csrf_token": token,
                                   "next": "/queue/audit"}).encode()
    return opener.open(f"{base}/login", data=form).read()


ONE_CORE = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def bench_search(sizes: tuple[int, ...] = (44_000, 200_000, 1_000_000), queries: int = 200) -> None:
    """Query latency of the exact index on one core (BLAS and torch on one thread), against the scan the search
    had before (both score vectors in full, then the top k) measured in the same process; then end-to-end
    queries (embedding + search) through the project's model and index when `deepfusion search --build` ran."""
    print(f"machine: {cpu_model()}; one thread")
    for n in sizes:
        r = child(f"""
import json, time, numpy as np, pandas as pd
from components.serving.search import Index, VectorSearch
rng = np.random.default_rng(0)
def unit(x): return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
n, d = {n}, 256
image, text = unit(rng.normal(size=(n, d))), unit(rng.normal(size=(n, d)))
image[rng.random(n) < 0.01] = np.nan
facets = pd.DataFrame({{"articleType": rng.integers(0, 140, n).astype(str),
                       "baseColour": rng.integers(0, 46, n).astype(str)}})
vs = VectorSearch(Index(np.arange(n), image, text, facets, "x"))
qs = unit(rng.normal(size=({queries}, d)))
def old(q, k=10):  # the search before the index interface: both scans in full, NaN photos as -1
    s = np.maximum(np.nan_to_num(image @ q, nan=-1.0), text @ q)
    b = np.argpartition(-s, k - 1)[:k]
    return b[np.argsort(-s[b])]
def lat(f):
    f(qs[0]); out = []
    for q in qs:
        t = time.perf_counter(); f(q); out.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(out, 50)), float(np.percentile(out, 99))
res = {{"old": lat(old), "new": lat(lambda q: vs.search(q, 10)),
        "filtered": lat(lambda q: vs.search(q, 10, {{"articleType": ["7"]}})),
        "mib": (image.nbytes + text.nbytes) / 2**20}}
print(json.dumps(res))""", ONE_CORE)
        (o50, o99), (n50, n99), (f50, f99) = r["old"], r["new"], r["filtered"]
        print(f"{n:>9,} products ({r['mib']:.0f} MiB of vectors): p50 {n50:.1f} / p99 {n99:.1f} ms; with a filter "
              f"{f50:.1f} / {f99:.1f} ms; previous scan {o50:.1f} / {o99:.1f} ms (p50 ratio new/previous "
              f"{n50 / o50:.2f})")
    real = child(f"""
import json, time, numpy as np, pandas as pd
import torch; torch.set_num_threads(1)
from pathlib import Path
from components.config import load_params
from components.serving.predict import default_model
from components.models.retrieval import towers_file
from components.serving.search import open_searcher
p = load_params()
source = "the project's model and index"
try:
    s = open_searcher(default_model(), search_dir=p.paths.search, towers=towers_file(p.paths.train_retrieval))
except (OSError, ValueError) as exc:
    # No trained model or index here: the query path on a full-size network with untrained weights (latency
    # does not depend on them) over random vectors of the catalog's size.
    from components.encoders import load_encoders
    from components.models.fusion import MODALITIES, ModelConfig, build_model
    from components.serving.categorizer import Categorizer
    from components.serving.search import Index, Searcher, model_key
    enc = load_encoders(p.paths.features)
    model = build_model(ModelConfig.from_params(p.model, MODALITIES, **enc.model_sizes())).eval()
    cat = Categorizer(model, enc, {{}}, torch.device("cpu"), (p.ingest.image_height, p.ingest.image_width))
    n = len(pd.read_parquet(Path(p.paths.ingest) / "products.parquet", columns=["id"]))
    v = np.random.default_rng(0).normal(size=(2, n, p.model.embed_dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    s = Searcher(cat, Index(np.arange(n), v[0], v[1], pd.DataFrame({{"c": np.zeros(n, str)}}), model_key(cat)))
    source = f"a full-size fusion network, untrained weights ({{exc}})"
prod = pd.read_parquet(Path(p.paths.ingest) / "products.parquet")
rows = prod.sample({queries}, random_state=0)
def lat(items, q):
    q(items[0]); out = []
    for it in items:
        t = time.perf_counter(); s.search(q(it), 10); out.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(out, 50)), float(np.percentile(out, 99))
titles = [str(t) for t in rows[p.catalog.title]]
imgs = np.load(Path(p.paths.ingest) / "images.npy", mmap_mode="r")
from PIL import Image
import io
def jpeg(i):
    b = io.BytesIO(); Image.fromarray(np.asarray(imgs[i])).save(b, format="JPEG"); return b.getvalue()
photos = [jpeg(i) for i in np.flatnonzero(prod["has_image"].to_numpy())[:{queries // 2}]]
print(json.dumps({{"n": len(s.index.ids), "source": source, "text": lat(titles, lambda t: s.query(t)),
                   "photo": lat(photos, lambda b: s.query(photo=b))}}))""", ONE_CORE)
    print(f"{real['source']}: {real['n']:,} products, query = embedding + search: words p50 {real['text'][0]:.1f} ms / "
          f"p99 {real['text'][1]:.1f} ms; photo p50 {real['photo'][0]:.1f} ms / p99 {real['photo'][1]:.1f} ms")


def categorize_home(tmp: Path, workspace: Path, batches: dict[str, int], shard_rows: int) -> tuple[Path, str]:
    """A home on `workspace`'s pipeline result (params, artifacts) writing into `tmp`, and a landing area in `tmp`
    with the given batches (name -> products) of real catalog products with their photos; -> (home, model)."""
    import shutil

    import pandas as pd
    import yaml

    from components.config import load_raw

    home = tmp / "home"
    home.mkdir()
    for name in ("artifacts", "data", "components"):
        if (workspace / name).exists():
            (home / name).symlink_to(workspace / name)
    raw = load_raw(workspace / "params.yaml")
    raw["landing"]["shard_rows"] = shard_rows
    raw["paths"]["categorize"] = str(tmp / "out")
    raw["paths"]["monitoring"] = str(tmp / "monitoring")
    raw["paths"]["review"] = str(tmp / "review")
    (home / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    source = Path(raw["paths"]["raw"])
    source = source if source.is_absolute() else workspace / source
    styles = pd.read_csv(source / "styles.csv", dtype=str, keep_default_na=False, on_bad_lines="skip")
    styles = styles[[(source / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    for batch, n in batches.items():
        folder = tmp / "landing" / batch
        (folder / "images").mkdir(parents=True)
        styles.head(n).to_csv(folder / "styles.csv", index=False)
        for pid in styles["id"].head(n):
            shutil.copy(source / "images" / f"{pid}.jpg", folder / "images" / f"{pid}.jpg")
    return home, str(workspace / raw["paths"]["stack"] / "combiner.json")


STEP = """
import json, time
from pathlib import Path
from components.orchestration import landing
t = time.perf_counter()
out = landing.{call}
print(json.dumps({{"seconds": time.perf_counter() - t, "out": out}}, default=str))"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def bench_shards(workspace: Path, n: int, shards: int) -> None:
    """The categorize DAG's sharded path against one process on the same core (one thread each): a batch of `n`
    real catalog products scored by categorize_batch, then by shard_plan + `shards` score_shards tasks + merge_shards,
    each step a fresh interpreter (as each mapped task is one). The difference over the shard count is the cost
    of a shard (interpreter, imports, model load, reading the batch again); the merge's own cost is printed apart.
    `workspace`: a pipeline result (its params.yaml and artifacts/stack), default this project."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home, model = categorize_home(tmp, workspace.resolve(), {"one": n, "sharded": n}, -(-n // shards))
        args = f"Path({str(home)!r}), Path({str(tmp / 'landing')!r})"
        one = child(STEP.format(call=f"categorize_batch({args}, 'one', {model!r})"), ONE_THREAD)
        plan = child(STEP.format(call=f"shard_plan({args}, ['sharded'], {model!r})"), ONE_THREAD)
        # one shard_rows-sized shard per task: as the DAG maps them
        parts = [child(STEP.format(call=f"score_shards({args}, {task!r}, {model!r})"), ONE_THREAD)
                 for task in plan["out"]]
        scored = [s for p in parts for s in p["out"]]
        merge = child(STEP.format(call=f"merge_shards({args}, 'sharded', {model!r}, {scored!r})"), ONE_THREAD)
    total = plan["seconds"] + sum(p["seconds"] for p in parts) + merge["seconds"]
    per_shard = (total - one["seconds"]) / len(parts)
    rate = one["out"]["products"] / one["seconds"]
    each = ", ".join(f"{p['seconds']:.1f}" for p in parts)
    print(f"categorize {one['out']['products']} products, CPU {cpu_model()}, one thread: one process "
          f"{one['seconds']:.1f} s ({rate:.0f} products/s, inside the task: interpreter start and imports not "
          f"counted); plan {plan['seconds']:.1f} s + {len(parts)} shards {sum(p['seconds'] for p in parts):.1f} s "
          f"(each {each} s) + merge {merge['seconds']:.1f} s = "
          f"{total:.1f} s, {total / one['seconds']:.2f}x the one process; cost of a shard "
          f"{per_shard:.1f} s (model load and batch read again)")


def bench_burst(workspace: Path, batches: int, products: int) -> None:
    """A burst of small uploads through the categorize DAG's steps, each task a fresh interpreter (one thread):
    one score task and one merge task per upload (the baseline: the DAG before grouping) against the tasks the DAG
    makes now (shards packed, merges in groups of landing.BATCHES_PER_TASK). Wall time per task includes the
    interpreter's start and imports (an Airflow task pays more on top: its runner and API calls)."""
    import time

    from components.orchestration.landing import in_groups

    def timed(call: str) -> tuple[float, list]:
        t = time.perf_counter()
        out = child(STEP.format(call=call), ONE_THREAD)["out"]
        return time.perf_counter() - t, out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = {v: [f"{v}-{k:03d}" for k in range(batches)] for v in ("each", "grouped")}
        home, model = categorize_home(tmp, workspace.resolve(), {n: products for v in names.values() for n in v},
                                      50_000)
        args = f"Path({str(home)!r}), Path({str(tmp / 'landing')!r})"
        seconds, tasks = {}, {}
        for variant in ("each", "grouped"):
            _, plan = timed(f"shard_plan({args}, {names[variant]!r}, {model!r})")
            merges = in_groups(names[variant])
            if variant == "each":  # the DAG before grouping: one shard per task, one batch per merge
                plan, merges = [[spec] for t in plan for spec in t], in_groups(names[variant], 1)
            runs = [timed(f"score_shards({args}, {t!r}, {model!r})") for t in plan]
            scored = [s for _, out in runs for s in out]
            runs += [timed(f"merge_group({args}, {m!r}, {model!r}, {scored!r})") for m in merges]
            seconds[variant], tasks[variant] = sum(s for s, _ in runs), len(runs)
    print(f"categorize a burst of {batches} uploads of {products} products, CPU {cpu_model()}, one thread, every "
          f"task a fresh interpreter: one score and one merge task per upload {tasks['each']} tasks "
          f"{seconds['each']:.1f} s; grouped {tasks['grouped']} tasks {seconds['grouped']:.1f} s "
          f"({seconds['each'] / seconds['grouped']:.2f}x less task time)")


def bench_model_load(model: str, repeats: int) -> None:
    """What a worker's task pays to load the champion: every artifact downloaded through the tracking server (the
    cache off: the baseline) vs the md5 cache warm (only the MLmodel file fetched). Each load a fresh process, as a
    task is; the server from MLFLOW_TRACKING_URI (and its USERNAME/PASSWORD)."""
    code = ("import json, time; t = time.perf_counter(); "
            "from components.serving.mlflow_model import load_categorizer_uri; t1 = time.perf_counter(); "
            f"load_categorizer_uri({model!r}); print(json.dumps({{'import_s': t1 - t, "
            "'load_s': time.perf_counter() - t1}))")
    with tempfile.TemporaryDirectory() as cache:
        child(code, {"DEEPFUSION_MODEL_CACHE": cache})  # fills the cache
        rows = {"downloaded (cache off)": [child(code, {"DEEPFUSION_MODEL_CACHE": "off"})["load_s"]
                                           for _ in range(repeats)],
                "cache warm": [child(code, {"DEEPFUSION_MODEL_CACHE": cache})["load_s"] for _ in range(repeats)]}
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    base = float(np.median(rows["downloaded (cache off)"]))
    print(f"model load of {model} from {os.environ.get('MLFLOW_TRACKING_URI', '(default store)')} "
          f"({size / 2**20:.1f} MiB of artifacts), {repeats} fresh processes each, {cpu_model()}:")
    for name, times in rows.items():
        med = float(np.median(times))
        print(f"  {name:<24} median {med:6.2f} s  (min {min(times):.2f}, max {max(times):.2f})  {base / med:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("ingest", "train", "predict", "review", "search", "shards", "burst",
                                     "model-load"))
    ap.add_argument("--model", default="models:/deepfusion@champion", help="model-load: the registered model")
    ap.add_argument("--workspace", type=Path, default=ROOT, help="shards, burst: a pipeline result (params + "
                    "artifacts)")
    ap.add_argument("--products", type=int, default=None, help="shards: products in the batch (default 4000); "
                    "burst: in each upload (default 40)")
    ap.add_argument("--batches", type=int, default=24, help="burst: uploads")
    ap.add_argument("--shards", type=int, default=4, help="shards: shards the batch is cut into")
    ap.add_argument("--repeats", type=int, default=3, help="train: fp32/bf16 pairs per model (median reported); "
                    "model-load: loads per variant")
    ap.add_argument("--models", nargs="+", default=["image", "text", "metadata", "fusion"],
                    choices=("image", "text", "metadata", "fusion"), help="train: which models")
    args = ap.parse_args()
    if args.what == "train":
        bench_train(repeats=args.repeats, models=tuple(args.models))
    elif args.what == "shards":
        bench_shards(args.workspace, args.products or 4000, args.shards)
    elif args.what == "burst":
        bench_burst(args.workspace, args.batches, args.products or 40)
    elif args.what == "model-load":
        bench_model_load(args.model, args.repeats)
    else:
        {"ingest": bench_ingest, "predict": bench_predict, "review": bench_review, "search": bench_search}[args.what]()


if __name__ == "__main__":
    main()
