"""Propose a catalog schema for an export: `deepfusion catalog inspect FOLDER [--write params.yaml]`.

Reads every CSV of the folder (a sample of rows), finds the id column, the title, the label levels (columns that
nest, or one column holding whole paths), the images (a column of file names or paths, or files named by id),
the date a product was added, and the metadata by kind. It prints a `catalog:` section with what it saw as
comments, for the user to check and edit; `--write` puts it into a params file (the rest of the file is kept).
Nothing here decides silently: every guess is in the comments, and `dvc repro` validates the result.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.atomic_io import atomic_write_bytes
from components.catalog import MISSING_TOKENS, SKU, CatalogError, normal_id

SAMPLE_ROWS = 20_000  # rows read per file: enough to see a column's kind, bounded time on any export
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PATH_SEPARATORS = (" > ", ">", " / ", "/", " | ", "|")
ID_NAME = re.compile(r"^(id|sku|.*_id|id_.*|product.?id|item.?id|style.?id|article.?(no|number|id))$", re.I)
TITLE_NAME = re.compile(r"title|name|display", re.I)
LABEL_NAME = re.compile(r"categ|type|class|department|dept|segment|family|group|division|level", re.I)
ADDED_NAME = re.compile(r"added|created|date|since|first", re.I)


@dataclass
class Column:
    name: str
    values: list[str]  # the sampled values, blanks as ""
    filled: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.filled = [v for v in self.values if v not in MISSING_TOKENS]

    @property
    def distinct(self) -> int:
        return len(set(self.filled))

    @property
    def fill(self) -> float:
        return len(self.filled) / max(len(self.values), 1)

    def share(self, test) -> float:
        return sum(map(test, self.filled)) / max(len(self.filled), 1)

    @property
    def words(self) -> float:
        return sum(len(v.split()) for v in self.filled) / max(len(self.filled), 1)


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _json_object(v: str) -> bool:
    if not v.startswith("{"):
        return False
    try:
        return isinstance(json.loads(v), dict)
    except json.JSONDecodeError:
        return False


def read_sample(path: Path) -> tuple[list[str], list[Column]]:
    """Header and sampled columns of one CSV; a bare-comma file (extra fields in some rows) keeps its extra
    fields joined into the last column, as the reader does for a title written last."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 (byte {exc.start}); re-export the file as UTF-8") from exc
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    if not header:
        raise CatalogError(f"{path}: no header row")
    data: list[list[str]] = [[] for _ in header]
    for k, fields in enumerate(rows):
        if k >= SAMPLE_ROWS:
            break
        if len(fields) > len(header):
            fields = fields[: len(header) - 1] + [",".join(fields[len(header) - 1:])]
        fields += [""] * (len(header) - len(fields))
        for i, v in enumerate(fields):
            data[i].append(v.strip())
    return header, [Column(h, vals) for h, vals in zip(header, data)]


def _nests(child: Column, parent: Column) -> bool:
    """Each child value has one parent value (in 99 % of rows: exports carry a few filing errors)."""
    pairs: dict[str, dict[str, int]] = {}
    for c, p in zip(child.values, parent.values):
        if c and p:
            pairs.setdefault(c, {}).setdefault(p, 0)
            pairs[c][p] += 1
    kept = sum(max(ps.values()) for ps in pairs.values())
    total = sum(sum(ps.values()) for ps in pairs.values())
    return total > 0 and kept / total >= 0.99


def find_path_column(cols: list[Column]) -> tuple[Column, str, int] | None:
    """A column whose values are whole paths: the same separator, two or more parts, in 90 % of rows."""
    for col in cols:
        if not col.filled or col.words > 12:
            continue
        for sep in PATH_SEPARATORS:
            parts = [len(v.split(sep)) for v in col.filled]
            deep = [n for n in parts if n >= 2]
            if len(deep) >= 0.9 * len(parts) and col.share(lambda v: not v.endswith(IMAGE_SUFFIXES)) > 0.9:
                depth = max(set(deep), key=deep.count)
                return col, sep, depth
    return None


def find_levels(cols: list[Column], rows: int) -> list[Column]:
    """Label level columns, coarsest first: categorical columns (2 to rows/3 values) that nest, preferring
    category-like names; the longest nesting chain."""
    cands = [c for c in cols if 2 <= c.distinct <= max(rows // 3, 3) and c.fill > 0.95 and c.words <= 4
             and not c.share(_number) > 0.5 and LABEL_NAME.search(c.name)]
    cands.sort(key=lambda c: c.distinct)
    best: list[Column] = []
    for start in range(len(cands)):  # greedy from each start; the longest chain wins (ties: the coarser top)
        chain = [cands[start]]
        for c in cands[start + 1:]:
            if c.distinct >= chain[-1].distinct and _nests(c, chain[-1]):
                chain.append(c)
        if len(chain) > len(best):
            best = chain
    return best


def find_images(folder: Path, cols: list[Column], ids: list[str]) -> dict:
    """The image reference: a column of file names/paths (with the folder they are relative to), or files
    named by id under one folder."""
    for col in cols:
        if col.filled and col.share(lambda v: v.lower().endswith(IMAGE_SUFFIXES)) > 0.9:
            sample = col.filled[:200]
            roots = [""] + sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())
            for root in roots:
                base = folder / root
                found = sum((base / v).is_file() for v in sample)
                if found >= 0.5 * len(sample):
                    return {"column": col.name, "root": root, "pattern": "",
                            "_seen": f"{found} of {len(sample)} sampled {col.name} values are files under "
                                     f"{root or 'the catalog folder'}"}
            return {"column": col.name, "root": "", "pattern": "",
                    "_seen": f"{col.name} names image files, but none was found under the folder: set root"}
    sample = ids[:200]
    for sub in [p for p in folder.rglob("*") if p.is_dir()]:
        for suffix in IMAGE_SUFFIXES:
            found = sum((sub / f"{i}{suffix}").is_file() for i in sample)
            if sample and found >= 0.5 * len(sample):
                rel = sub.relative_to(folder)
                return {"column": "", "root": "", "pattern": f"{rel}/{{id}}{suffix}",
                        "_seen": f"{found} of {len(sample)} sampled ids have {rel}/<id>{suffix}"}
    return {"column": "", "root": "", "pattern": "", "_seen": "no images found: the models will read text only"}


def propose(folder: str | Path) -> tuple[dict, list[str]]:
    """(the proposed `catalog:` mapping, notes on what was seen). Raises CatalogError when the folder holds no
    usable CSV."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.csv") if p.is_file())
    if not files:
        raise CatalogError(f"{folder}: no .csv file; point inspect at the folder of the export")
    samples = {p.name: read_sample(p) for p in files}
    notes: list[str] = []

    def id_column(cols: list[Column]) -> Column | None:
        unique = [c for c in cols if c.filled and c.distinct == len(c.filled) and c.fill > 0.99
                  and c.share(lambda v: bool(SKU.fullmatch(v))) > 0.99]
        named = [c for c in unique if ID_NAME.match(c.name)]
        return (named or unique or [None])[0]

    # The main file: one row per product (a unique id column) and the labels (the longest nesting chain).
    ranked = sorted(samples.items(), key=lambda kv: (id_column(kv[1][1]) is not None,
                                                     len(find_levels(kv[1][1], len(kv[1][1][0].values))),
                                                     sum(bool(LABEL_NAME.search(h)) for h in kv[1][0]),
                                                     len(kv[1][0])), reverse=True)
    main, (header, cols) = ranked[0]
    idc = id_column(cols)
    if idc is None:
        raise CatalogError(f"{folder / main}: no column has one distinct value per row; the export needs a "
                           "product id column")
    others = [name for name, (h, _) in ranked[1:] if idc.name in h]
    all_cols = cols + [c for name in others for c in samples[name][1] if c.name != idc.name
                       and c.name not in {x.name for x in cols}]
    id_type = "int" if all(normal_id(v) == v for v in idc.filled) else "string"
    rest = [c for c in all_cols if c is not idc]
    texts = [c for c in rest if c.distinct > 0.5 * len(c.filled) and not c.share(_number) > 0.5
             and not c.share(_json_object) > 0.5 and not c.share(lambda v: v.lower().endswith(IMAGE_SUFFIXES)) > 0.5]
    titles = sorted(texts, key=lambda c: (bool(TITLE_NAME.search(c.name)) and c.words <= 30, -abs(c.words - 7)),
                    reverse=True)
    title = titles[0] if titles else None
    description = next((c for c in rest if c is not title and re.search(r"desc", c.name, re.I)),
                       next((c for c in texts if c is not title and c.words > 15), None))
    rows = len(idc.values)
    path = find_path_column(rest)
    if path:
        levels, label_path = [f"level{k + 1}" for k in range(path[2])], {"column": path[0].name,
                                                                            "separator": path[1]}
        notes.append(f"labels: {path[0].name!r} holds whole paths ({path[2]} parts split by {path[1]!r}); "
                     "rename the levels as you like")
        used = {path[0].name}
    else:
        chain = find_levels(rest, rows)
        levels, label_path = [c.name for c in chain], {"column": "", "separator": " > "}
        notes.append("labels: " + (", ".join(f"{c.name} ({c.distinct} values)" for c in chain) if chain else
                                   "no nesting category columns found: list the level columns under levels"))
        used = set(levels)
    images = find_images(folder, rest, idc.filled)
    notes.append("images: " + images.pop("_seen"))
    added = next((c for c in rest if ADDED_NAME.search(c.name) and c.fill > 0.5 and
                  (c.share(lambda v: _number(v) and 1e8 < float(v) < 5e9) > 0.9 or
                   c.share(lambda v: bool(re.match(r"\d{4}-\d{2}-\d{2}", v))) > 0.9)), None)
    taken = {idc.name, *(c.name for c in (title, description, added) if c), *used, images["column"]}
    attributes = [c.name for c in rest if c.name not in taken and c.share(_json_object) > 0.5]
    numeric, categorical, left = [], [], []
    for c in rest:
        if c.name in taken or c.name in attributes or not c.filled:
            continue
        if c.share(_number) > 0.95:
            numeric.append(c.name)
        elif c.distinct <= max(50, rows // 20):
            categorical.append(c.name)
        else:
            left.append(c.name)
    if left:
        notes.append(f"left out (many distinct free-text values): {', '.join(left)}; add short ones to attributes")
    notes.append("check restates: columns that repeat the category (a new listing would not have them) "
                 "must be listed there, never used as features")
    schema = {
        "files": [main, *others], "id": idc.name, "id_type": id_type, "title": title.name if title else "",
        "description": description.name if description else "", "image": images,
        "added": added.name if added else "", "levels": levels, "label_path": label_path,
        "categorical": categorical, "numeric": numeric, "attributes": attributes, "restates": [],
        "known_top": [], "allowed": {}, "ranges": {},
    }
    return schema, notes


def render(schema: dict, notes: list[str]) -> str:
    """The `catalog:` section as YAML, what was seen as comments above it."""
    body = yaml.safe_dump({"catalog": schema}, sort_keys=False, default_flow_style=None, width=110,
                          allow_unicode=True)
    return "".join(f"# {n}\n" for n in notes) + body


def write_into(params_file: Path, schema: dict) -> None:
    """Replace (or add) the `catalog:` section of a params file; every other section is kept as written."""
    text = params_file.read_text(encoding="utf-8") if params_file.is_file() else ""
    section = yaml.safe_dump({"catalog": schema}, sort_keys=False, default_flow_style=None, width=110,
                             allow_unicode=True)
    lines, out, skipping = text.splitlines(keepends=True), [], False
    for line in lines:
        if line.startswith("catalog:"):
            skipping = True
            out.append(section)
            continue
        if skipping and line.strip() and not line.startswith((" ", "#")):
            skipping = False
        if not skipping:
            out.append(line)
    if not any(line.startswith("catalog:") for line in lines):
        out = [section, "\n", *out]
    atomic_write_bytes(params_file, "".join(out).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepfusion catalog", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    ins = sub.add_parser("inspect", help="read an export and propose its catalog schema")
    ins.add_argument("folder", type=Path, help="the export folder (its CSV files and images)")
    ins.add_argument("--write", type=Path, metavar="PARAMS",
                     help="put the proposal into this params file's catalog: section (e.g. params.yaml)")
    args = ap.parse_args(argv)
    try:
        schema, notes = propose(args.folder)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(schema, notes), end="")
    if args.write:
        write_into(args.write, schema)
        print(f"# written into {args.write}: check it, then `dvc repro`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
