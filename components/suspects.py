"""`deepfusion audit`: the catalog audit's suspected mislabels, most suspicious first.

    deepfusion audit [--top 20] [--level articleType] [--csv suspects.csv]

Reads what the pipeline's `audit` stage wrote (`dvc repro audit` makes or refreshes it): audit.csv ranks every
product, audit.html shows the top suspects with their photos.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from components.atomic_io import atomic_write_bytes, csv_bytes


def suspects(table: pd.DataFrame, level: str | None = None) -> pd.DataFrame:
    """The suspects of an audit table in its order (least trusted label first); one level's only if given."""
    out = table[table["suspect"].astype(bool)]
    if level:
        out = out[out["suspect_levels"].fillna("").str.split(",").map(lambda levels: level in levels)]
    return out.reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepfusion audit", description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=20, help="how many suspects to print (default 20)")
    ap.add_argument("--level", help="only products whose label is suspected at this level (a catalog level)")
    ap.add_argument("--csv", type=Path, help="write every suspect (all columns) to this CSV")
    ap.add_argument("--audit", type=Path, help="the audit folder (default: params paths.audit)")
    args = ap.parse_args(argv)  # before the params: --help works anywhere
    if args.audit is None:
        from components.config import load_params

        args.audit = Path(load_params().paths.audit)
    path = args.audit / "audit.csv"
    if not path.is_file():
        print(f"error: {path}: no audit yet; run `dvc repro audit` first", file=sys.stderr)
        return 2
    table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    found = suspects(table, args.level)
    if args.csv:
        atomic_write_bytes(args.csv, csv_bytes(found))
    # The finest level is the last `current_*` column of the audit table (levels are written coarsest first).
    article = [c.removeprefix("current_") for c in table.columns if c.startswith("current_")][-1]
    if args.level and f"current_{args.level}" not in table:
        levels = [c.removeprefix("current_") for c in table.columns if c.startswith("current_")]
        print(f"error: --level {args.level}: not a level of this catalog ({', '.join(levels)})", file=sys.stderr)
        return 2
    for r in found.head(args.top).itertuples(index=False):
        print(f"{r.id}  {getattr(r, f'current_{article}')} -> {getattr(r, f'suggested_{article}')}  "
              f"(label quality {float(r.label_quality):.3f}; {r.suspect_levels})  {r.title}")
    print(f"{len(found)} suspects of {len(table)} products"
          + (f"; all written to {args.csv}" if args.csv else "") + f"; with photos: {args.audit / 'audit.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
