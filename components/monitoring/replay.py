"""Carve the catalog export into monthly "new catalog" batches by the date products were added (catalog.added).

    deepfusion replay [--source data] [--output artifacts/replay]     (or python -m components.replay)

Products added after drift.reference_date (`timeslice`: from the next midnight on) become batches `YYYY-MM/`
in the export's own shape (its files as written, images hard-linked at the same relative paths). Months under
drift.min_batch_rows are merged into the following month (the folder is named after the last month it covers).
Undated products stay out.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from components.atomic_io import atomic_dir, write_json
from components.catalog import ADDED, CatalogError, normal_id, read_catalog
from components.config import CatalogSchema, load_params
from components.monitoring import timeslice

log = logging.getLogger(__name__)


def month_batches(dates: pd.Series, end: float, min_rows: int) -> dict[str, list[int]]:
    """Row positions per batch name of the products added at or after `end`; small months roll forward into
    the next one."""
    after = dates[timeslice.after(dates, end)]
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


def styles_lines(source: Path, schema: CatalogSchema) -> tuple[str, dict[str, str]]:
    """The export's main file header and each product's original line (bare commas kept) by canonical id, so a
    batch written from them parses exactly like the export."""
    lines = (source / schema.files[0]).read_text(encoding="utf-8").splitlines()
    at = [h.strip() for h in lines[0].split(",")].index(schema.id)
    out = {}
    for ln in lines[1:]:
        fields = ln.split(",")
        pid = normal_id(fields[at].strip(), schema.id_type) if len(fields) > at else None
        if pid is not None:
            out[pid] = ln
    return lines[0], out


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_batch(source: Path, frame: pd.DataFrame, styles_lines: dict[str, str], header: str, dst: Path,
                schema: CatalogSchema) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in frame["id"]]
    (dst / schema.files[0]).write_text("\n".join([header, *(styles_lines[i] for i in ids)]) + "\n",
                                       encoding="utf-8")
    keep = set(ids)
    for name in schema.files[1:]:
        if (source / name).is_file():
            other = pd.read_csv(source / name, dtype=str, keep_default_na=False)
            mine = other[schema.id].map(lambda v: normal_id(v.strip(), schema.id_type)).isin(keep)
            other[mine].to_csv(dst / name, index=False, quoting=csv.QUOTE_MINIMAL)
    root = source.resolve()
    for rel in frame["image"].fillna(""):
        src = (root / str(rel)).resolve()
        # Only files of the catalog: a `../` or absolute path (or a symlink out) is never linked into a batch.
        if rel and src.is_relative_to(root) and src.is_file():
            target = dst / src.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, target)


def run(source: Path, output: Path, reference_date: str, min_rows: int, schema: CatalogSchema) -> dict:
    if not schema.added:
        raise CatalogError("replay cuts the catalog by the date each product was added: name that column in "
                           "params.catalog.added")
    read = read_catalog(source, schema, require_labels=False)
    frame = read.frame
    header, lines = styles_lines(source, schema)
    end = timeslice.day_end(reference_date)
    batches = month_batches(frame[ADDED], end, min_rows)
    index = {}
    with atomic_dir(output) as tmp:
        for name, rows in batches.items():
            write_batch(source, frame.iloc[rows], lines, header, tmp / name, schema)
            index[name] = len(rows)
        reference = int(timeslice.before(frame[ADDED], end).sum())
        write_json(tmp / "batches.json", {"reference_date": reference_date, "batches": index,
                                          "reference_products": reference,
                                          "undated_products": int(frame[ADDED].isna().sum())})
    log.info("replay: %d batches after %s: %s", len(index), reference_date, index)
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepfusion replay", description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, help="the catalog export to carve (default: params paths.raw)")
    ap.add_argument("--output", type=Path, help="folder of the monthly batches (default: params paths.replay)")
    args = ap.parse_args(argv)  # before the params: --help works anywhere
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_params()
    source = args.source or Path(params.paths.raw)
    output = args.output or Path(params.paths.replay)
    for name, n in run(source, output, params.drift.reference_date, params.drift.min_batch_rows,
                       params.catalog).items():
        print(f"{name}: {n} products")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
