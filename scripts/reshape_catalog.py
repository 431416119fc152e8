"""Build a catalog shaped like another retailer's from ours (issue 40's real-data proof), and its params.

    .venv/bin/python scripts/reshape_catalog.py SOURCE_DIR OUT_DIR [--params-out params.reshaped.yaml]

What changes, so that nothing of our export's shape is left for the system to lean on:
- one file, `catalog_export.csv`, properly quoted, every column renamed (`id` -> `item_sku`, a SKU with letters:
  `MY-<id>`; `productDisplayName` -> `product_name`; ...);
- the labels become one 4-level path column, `taxonomy` = `gender > masterCategory > subCategory > articleType`
  (`Men > Apparel > Topwear > Tshirts`);
- two metadata columns dropped (`season`, `usage`), two attribute columns added from the JSON attributes
  (`fabric`, `fit_type`);
- images moved to `pictures/` under other names (`img_<n>.jpg`, a `picture` column names each).
The params written beside it are ours with this `catalog:` section (gender is now a label level, so it is no
longer metadata) and a 4-level `level_weights`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.catalog import ATTRIBUTES, IMAGE, TITLE, read_catalog  # noqa: E402
from components.config import load_raw, params_from_dict  # noqa: E402

RENAMES = {"baseColour": "colour_name", "year": "model_year", "brandName": "brand", "ageGroup": "age_band",
           "colour1": "colour_primary", "colour2": "colour_secondary", "price": "list_price",
           "discountedPrice": "sale_price", "catalogAddDate": "listed_at", "fashionType": "line",
           "description": "long_text", "displayCategories": "site_sections", "variantName": "variant"}
LEVEL_NAMES = ["audience", "division", "category", "product_type"]


def reshape(source: Path, out: Path) -> dict:
    """Write the reshaped export into `out` (a new folder); return its `catalog:` section."""
    raw = load_raw(ROOT / "params.yaml")
    ours = params_from_dict(raw).catalog
    frame = read_catalog(source, ours, require_labels=True).frame
    # Rows our own ingest quarantines for their top level (params.ingest.exclude_master) stay out: the reshaped
    # catalog's top level is the audience, so its ingest could no longer tell them apart.
    dropped = frame[ours.levels[0]].isin(raw["ingest"]["exclude_master"])
    frame = frame[(frame[list(ours.levels)] != "").all(axis=1) & (frame["gender"] != "") & ~dropped]
    frame = frame.reset_index(drop=True)
    (out / "pictures").mkdir(parents=True)
    rows = []
    for n, r in enumerate(frame.itertuples(index=False)):
        rec = r._asdict()
        attrs = {}
        try:
            attrs = json.loads(rec[ATTRIBUTES]) if rec[ATTRIBUTES] else {}
        except json.JSONDecodeError:
            pass
        picture = ""
        src = source / str(rec[IMAGE])
        if rec[IMAGE] and src.is_file():
            picture = f"img_{n:06d}.jpg"
            try:
                os.link(src, out / "pictures" / picture)
            except OSError:
                shutil.copy2(src, out / "pictures" / picture)
        row = {"item_sku": f"MY-{rec['id']}", "product_name": rec[TITLE],
               "taxonomy": " > ".join([rec["gender"], *(rec[lvl] for lvl in ours.levels)]),
               "picture": picture,
               "fabric": "" if attrs.get("Fabric") in (None, "NA") else str(attrs["Fabric"]),
               "fit_type": "" if attrs.get("Fit") in (None, "NA") else str(attrs["Fit"])}
        for old, new in RENAMES.items():
            value = rec.get(old, "")
            row[new] = "" if value != value else value  # NaN (a missing number) is a blank field
        rows.append(row)
    with (out / "catalog_export.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {
        "files": ["catalog_export.csv"], "id": "item_sku", "id_type": "string", "title": "product_name",
        "description": "long_text", "image": {"column": "picture", "root": "pictures", "pattern": ""},
        "added": "listed_at", "levels": LEVEL_NAMES, "label_path": {"column": "taxonomy", "separator": " > "},
        "categorical": ["colour_name", "brand", "age_band", "colour_primary", "colour_secondary", "line"],
        "numeric": ["list_price", "sale_price", "model_year"], "attributes": ["fabric", "fit_type"],
        "restates": ["site_sections"], "known_top": [], "allowed": {},
        "ranges": {"list_price": [0, 1000000], "model_year": [2000, 2030]},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="our export (data/)")
    ap.add_argument("out", type=Path, help="a new folder for the reshaped export")
    ap.add_argument("--params-out", type=Path, help="write params.yaml for it here (ours with its catalog:)")
    args = ap.parse_args(argv)
    if args.out.exists():
        ap.error(f"{args.out}: exists; give a new folder")
    schema = reshape(args.source, args.out)
    if args.params_out:
        raw = load_raw(ROOT / "params.yaml")
        raw["catalog"] = schema
        raw["ingest"]["exclude_master"] = []  # a top level is now the audience, not the master category
        for stage in ("train_baseline", "train_fusion"):
            raw[stage]["train"]["level_weights"] = [0.2, 0.3, 0.5, 1.0]
        # Our floors, on the levels that took over; the audience (gender) is new and gets none.
        raw["registry"]["floors"] = {"division": raw["registry"]["floors"]["masterCategory"],
                                     "category": raw["registry"]["floors"]["subCategory"],
                                     "product_type": raw["registry"]["floors"]["articleType"]}
        raw["drift"]["categorical"] = ["colour_name"]
        raw["drift"]["numeric"] = ["list_price"]
        params_from_dict(raw)  # the result must load
        args.params_out.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"wrote {args.out} ({sum(1 for _ in (args.out / 'pictures').iterdir())} pictures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
