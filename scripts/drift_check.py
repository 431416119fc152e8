"""Measure the drift monitor on the real catalog: false alarms on normal batches, detections on drifted ones.

    python scripts/drift_check.py [--batches 20] [--model PATH] [--workdir /tmp/drift_check]

1. False-alarm rate: `--batches` random batches of 300 and of 2,000 test-split products (never used to fit or
   calibrate anything: the null is drawn from the validation split), each judged as `drift` judges a batch.
2. Four drifted batches built as catalog folders and run through `components.drift` end to end: footwear only;
   photos darkened and tinted; 5 % products whose article type the model never saw; titles in upper case
   with the brand removed. And one 2,000-product normal batch, timed (null distribution already cached).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from components.catalog import read_catalog
from components.checkpoint import fusion_checkpoint
from components.config import load_params
from components.monitoring import drift, replay
from components.serving.predict import load_categorizer


def false_alarms(base: drift.Baseline, pool: pd.DataFrame, size: int, batches: int, seed: int) -> tuple[int, list]:
    rng = np.random.default_rng(seed)
    fired = []
    for _ in range(batches):
        s = drift.assess(base, pool.iloc[np.sort(rng.choice(len(pool), size, replace=False))].reset_index(drop=True))
        if s["drift_detected"]:
            fired.append(s["drifted"])
    return len(fired), fired


def write(source: Path, frame: pd.DataFrame, ids: list[int], dst: Path) -> Path:
    header, lines = replay.styles_lines(source)
    shutil.rmtree(dst, ignore_errors=True)
    replay.write_batch(source, frame[frame["id"].isin(ids)], lines, header, dst)
    return dst


def darken(batch: Path) -> None:
    for p in (batch / "images").glob("*.jpg"):
        try:
            img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
        except OSError:
            continue
        p.unlink()  # a hard link to the catalog: never write through it
        Image.fromarray(np.clip(img * [0.45, 0.5, 0.65], 0, 255).astype(np.uint8)).save(p, format="JPEG")


def shout_without_brand(batch: Path, brands: dict[int, str]) -> None:
    styles = batch / "styles.csv"
    lines = styles.read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for ln in lines[1:]:
        *head, title = ln.split(",", 9)  # the title is the last field and may hold bare commas
        brand = brands.get(int(head[0]), "")
        if brand:
            title = " ".join(w for w in title.split() if w.lower() not in brand.lower().split())
        out.append(",".join([*head, title.upper()]))
    styles.write_text("\n".join(out) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--model")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/drift_check"))
    args = ap.parse_args()
    params = load_params()
    model = args.model or str(fusion_checkpoint(params.paths.train_fusion))
    cat = load_categorizer(model)
    t0 = time.perf_counter()
    base = drift.Baseline(params, cat)
    print(f"baseline: {len(base.reference.frame)} reference + {len(base.pool)} null-pool products described "
          f"({'cached' if base.cached else f'{time.perf_counter() - t0:.1f} s'}), cache {base.folder}")
    test = drift.describe_split(params.paths.ingest, "test", None, params.seed, cat)
    print(f"\n1. false alarms on random batches of test-split products (target <= 5 %, "
          f"false_alarm_rate {params.drift.false_alarm_rate})")
    for size in (300, 2000):
        t0 = time.perf_counter()
        base.calibration(drift.null_size(size, params.drift))
        t_null = time.perf_counter() - t0
        n, fired = false_alarms(base, test, size, args.batches, params.seed + size)
        print(f"   size {size:>5}: {n}/{args.batches} batches flagged = {n / args.batches:.0%} "
              f"(null for this size: {t_null:.1f} s){'; fired: ' + str(fired) if fired else ''}")

    source = Path(params.paths.raw)
    products = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    raw = read_catalog(source, params.catalog, require_labels=False).frame
    tst = products[products["split"] == "test"]
    rng = np.random.default_rng(params.seed)
    sample = sorted(rng.choice(tst["id"].to_numpy(), 1000, replace=False))
    unseen = products.loc[~products["articleType_raw"].isin(cat.encoders.labels["articleType"]), "id"].to_numpy()
    normal = [i for i in sample if i not in set(unseen)][:950]
    cases = {
        "normal_2000": (sorted(rng.choice(tst["id"].to_numpy(), 2000, replace=False)), None),
        "footwear_only": (tst.loc[tst["masterCategory"] == "Footwear", "id"].tolist(), None),
        "dark_photos": (sample, darken),
        "unseen_types_5pct": (normal + sorted(rng.choice(unseen, 50, replace=False)), None),
        "upper_titles_no_brand": (sample, lambda b: shout_without_brand(
            b, dict(zip(products["id"], products["brandName"].fillna(""))))),
    }
    print("\n2. batches through `python -m components.drift` (expected: normal_2000 quiet, the rest DRIFT)")
    for name, (ids, alter) in cases.items():
        batch = write(source, raw, ids, args.workdir / name)
        if alter:
            alter(batch)
        s = drift.run(params, batch, args.workdir / "out" / name, model)
        print(f"   {name}: {'DRIFT' if s['drift_detected'] else 'no drift'} ({s['products']} products, "
              f"{s['seconds']} s, null cache {'reused' if s['null_cache_reused'] else 'built'})")
        for r in s["reasons"][:4]:
            print(f"      - {r}")


if __name__ == "__main__":
    main()
