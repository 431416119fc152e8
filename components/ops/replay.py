"""Carve the catalog export into monthly "new catalog" batches by catalogAddDate.

    python -m components.replay [--source data] [--output artifacts/replay]
    python -m components.replay backtest [--output artifacts/backtest]   (components.ops.backtest)

Products added after drift.reference_date become batches `YYYY-MM/` in the data/ layout (styles.csv written
as in the export, products.csv, images/ hard-linked). Months under drift.min_batch_rows are merged into the
following month (the folder is named after the last month it covers). Undated products stay out.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.catalog import read_catalog
from components.config import load_params

log = logging.getLogger(__name__)


def month_batches(dates: pd.Series, cutoff: float, min_rows: int) -> dict[str, list[int]]:
    """Row positions per batch name; small months roll forward into the next one."""
    after = dates[dates > cutoff]
    months = pd.to_datetime(after, unit="s", utc=True).dt.strftime("%Y-%m")
    batches, pending = {}, []
    for month in sorted(months.unique()):
        pending += list(months.index[months == month])
        if len(pending) >= min_rows:
            batches[month], pending = sorted(pending), []
    if pending:  # the tail: merged into the last batch, or a batch of its own if there is none
        last = sorted(months.unique())[-1]
        if batches:
            key = list(batches)[-1]
            batches[f"{key}_to_{last}"] = sorted(batches.pop(key) + pending)
        else:
            batches[last] = sorted(pending)
    return batches


def styles_lines(source: Path) -> tuple[str, dict[int, str]]:
    """The export's styles.csv header and each product's original line (bare commas kept), so a batch written
    from them parses exactly like the export."""
    lines = (source / "styles.csv").read_text(encoding="utf-8").splitlines()
    return lines[0], {int(ln.split(",", 1)[0]): ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit()}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_batch(source: Path, frame: pd.DataFrame, styles_lines: dict[int, str], header: str, dst: Path) -> None:
    (dst / "images").mkdir(parents=True)
    (dst / "styles.csv").write_text("\n".join([header, *(styles_lines[i] for i in frame["id"])]) + "\n",
                                    encoding="utf-8")
    products = pd.read_csv(source / "products.csv", dtype=str, keep_default_na=False)
    products[products["id"].astype(int).isin(set(frame["id"]))].to_csv(dst / "products.csv", index=False,
                                                                       quoting=csv.QUOTE_MINIMAL)
    root = source.resolve()
    for rel in frame["image"].fillna(""):
        src = (root / str(rel)).resolve()
        # Only files of the catalog: a `../` or absolute path (or a symlink out) is never linked into a batch.
        if rel and src.is_relative_to(root) and src.is_file():
            _link_or_copy(src, dst / "images" / src.name)


def run(source: Path, output: Path, reference_date: str, min_rows: int) -> dict:
    read = read_catalog(source, require_labels=False)
    frame = read.frame
    header, lines = styles_lines(source)
    cutoff = datetime.fromisoformat(reference_date).replace(tzinfo=UTC).timestamp() + 86400
    batches = month_batches(frame["catalogAddDate"], cutoff, min_rows)
    index = {}
    with atomic_dir(output) as tmp:
        for name, rows in batches.items():
            write_batch(source, frame.iloc[rows], lines, header, tmp / name)
            index[name] = len(rows)
        write_json(tmp / "batches.json", {"reference_date": reference_date, "batches": index,
                                          "reference_products": int((frame["catalogAddDate"] <= cutoff).sum()),
                                          "undated_products": int(frame["catalogAddDate"].isna().sum())})
    log.info("replay: %d batches after %s: %s", len(index), reference_date, index)
    return index


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    ap = argparse.ArgumentParser(prog="python -m components.replay", description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=["batches", "backtest"], default="batches")
    ap.add_argument("--source", type=Path, default=Path(params.paths.raw))
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    if args.command == "backtest":
        from components.ops import backtest

        result = backtest.run(params, args.output or Path(params.drift.backtest.output))
        for m in result["months"]:
            print(f"{m['month']}: {'DRIFT' if m['drift_detected'] else 'quiet'} score {m['drift_score']}, "
                  f"accuracy {m['accuracy']}, macro-F1 {m['macro_f1']}")
        for r in result["retrains"]:
            print(f"retrained after {r['fired_on']}: on {r['scored_on']} accuracy {r['as_of_accuracy']:.4f} -> "
                  f"{r['retrained_accuracy']:.4f}, macro-F1 {r['as_of_macro_f1']:.4f} -> {r['retrained_macro_f1']:.4f}")
        return
    args.output = args.output or Path(params.drift.replay_output)
    for name, n in run(args.source, args.output, params.drift.reference_date, params.drift.min_batch_rows).items():
        print(f"{name}: {n} products")


if __name__ == "__main__":
    main()
