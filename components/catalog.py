"""Read a catalog export folder (styles.csv, optional products.csv, images/) into one table.

The same reader serves training (ingest), batch categorization (predict) and drift batches, so a
product is parsed identically everywhere. Bad rows are returned as problems, never dropped silently.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

LEVELS = ("masterCategory", "subCategory", "articleType")
ARTICLE = LEVELS.index("articleType")  # column of the finest level in (N, 3) label arrays
STYLE_COLUMNS = ("id", "gender", *LEVELS, "baseColour", "season", "year", "usage", "productDisplayName")
PRODUCT_COLUMNS = ("image", "brandName", "ageGroup", "colour1", "colour2", "price", "discountedPrice",
                   "catalogAddDate", "displayCategories", "variantName", "fashionType",
                   "articleAttributes", "description")
NUMERIC_COLUMNS = ("year", "price", "discountedPrice", "catalogAddDate")
# The export writes "NA" (and sometimes "") for "no value"; both mean missing.
MISSING_TOKENS = frozenset({"", "NA", "N/A", "nan", "NaN", "null", "None"})
TITLE = "productDisplayName"
# The masterCategory values the taxonomy knows (ingest quarantines others; validation expects only these).
KNOWN_MASTERS = ("Apparel", "Accessories", "Footwear", "Personal Care", "Sporting Goods")


class CatalogError(ValueError):
    """The catalog folder or one of its files cannot be read at all (not a single bad row)."""


@dataclass
class CatalogRead:
    frame: pd.DataFrame  # one row per accepted product, columns STYLE_COLUMNS + PRODUCT_COLUMNS + extras
    problems: list[dict] = field(default_factory=list)  # {file, row, id, field, reason[, kept: the row was read]}


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise CatalogError(f"{path}: file is empty; export the catalog again (a header row is required)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CatalogError(
            f"{path}: not UTF-8 (byte {exc.start}, line {line}: {raw[exc.start:exc.start + 1]!r}); "
            "re-export the file as UTF-8"
        ) from exc


def _clean(value: str) -> str:
    value = value.strip()
    return "" if value in MISSING_TOKENS else value


MAX_FIELD_CHARS = 1 << 24  # the csv module's default (131,072) stops the whole file at one long field


def _records(text: str, path: Path) -> tuple[list[tuple[int, list[str]]], list[dict]]:
    """(first line number, fields) of every record, the header first, and the problems met.

    A quote opened at the start of a field and never closed would make the csv module read every line up
    to the next quote as one field; such a record is re-read line by line with the quote as a literal
    character, so no line is lost, and reported.
    """
    csv.field_size_limit(MAX_FIELD_CHARS)
    lines = text.split("\n")  # how StringIO iterates: line k of the reader is lines[k - 1]
    reader = csv.reader(io.StringIO(text))
    out, problems = [], []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a field over MAX_FIELD_CHARS, a NUL byte...
            raise CatalogError(f"{path}: line {start}: {exc}; fix that line and export again") from exc
        end = reader.line_num
        if end > start and any("\n" in f for f in fields):
            # kept: a note on rows that were read, not a rejection (predict and ingest keep these rows)
            problems.append({"file": path.name, "row": start, "id": lines[start - 1].split(",")[0], "field": "*",
                             "kept": True, "reason": f"unbalanced_quote (a quote opened here ran to line {end}; lines "
                                       f"{start}-{end} were read with it as a plain character)"})
            out += [(start + k, f) for k, f in enumerate(csv.reader(lines[start - 1:end], quoting=csv.QUOTE_NONE))]
        else:
            out.append((start, fields))
    return out, problems


def normal_id(raw: str) -> str | None:
    """A product id as its canonical decimal string ('007' -> '7'), or None when it is not a positive
    integer that fits int64 (ASCII digits only: '²' passes str.isdigit())."""
    if not raw or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return str(value) if 0 < value < 2**63 else None


def parse_styles(path: Path, require_labels: bool) -> tuple[list[dict], list[dict]]:
    """Parse styles.csv, which is written with bare commas: a title may hold commas."""
    text = _decode(path)
    records, problems = _records(text, path)
    if not records:
        raise CatalogError(f"{path}: no header row; export the catalog again")
    header = [h.strip() for h in records[0][1]]
    records = records[1:]
    required = ["id", TITLE, *(LEVELS if require_labels else ())]
    missing = [c for c in required if c not in header]
    if missing:
        # The header is not quoted back: a file that is not a catalog (a secret, via a link) stays unread.
        raise CatalogError(f"{path}: missing column(s) {missing} in the header line ({len(header)} columns "
                           f"found). Expected the Kaggle layout: {','.join(STYLE_COLUMNS)}")
    # Unquoted commas inside the title shift fields; the title is rejoined when it is the last column.
    title_last = header[-1] == TITLE
    rows = []
    for lineno, fields in records:
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) > len(header):
            if not title_last:
                problems.append({"file": path.name, "row": lineno, "id": fields[0], "field": "*",
                                 "reason": f"too_many_fields ({len(fields)} > {len(header)})"})
                continue
            fields = fields[: len(header) - 1] + [",".join(fields[len(header) - 1:])]
        elif len(fields) < len(header):
            problems.append({"file": path.name, "row": lineno, "id": fields[0], "field": "*",
                             "reason": f"too_few_fields ({len(fields)} < {len(header)})"})
            continue
        rec = {h: _clean(v) for h, v in zip(header, fields)}
        rec[TITLE] = fields[header.index(TITLE)].strip()
        if rec[TITLE] in MISSING_TOKENS:
            rec[TITLE] = ""
        rec["source_row"] = lineno
        rows.append(rec)
    return rows, problems


def parse_products(path: Path) -> tuple[dict[str, dict], list[dict]]:
    """Parse products.csv (properly quoted), keyed by id."""
    text = _decode(path)
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "id" not in reader.fieldnames:
        raise CatalogError(f"{path}: no 'id' column in the header line; products.csv needs id plus any of "
                           f"{', '.join(PRODUCT_COLUMNS)}")
    out, problems = {}, []
    try:
        rows = list(reader)
    except csv.Error as exc:  # a field over MAX_FIELD_CHARS, a NUL byte...
        raise CatalogError(f"{path}: line {reader.line_num}: {exc}; fix that line and export again") from exc
    for lineno, rec in enumerate(rows, start=2):
        if None in rec:  # more fields than the header
            problems.append({"file": path.name, "row": lineno, "id": rec.get("id"), "field": "*",
                             "reason": "too_many_fields"})
            continue
        pid = (rec.get("id") or "").strip()
        if pid in out:
            problems.append({"file": path.name, "row": lineno, "id": pid, "field": "id",
                             "reason": "duplicate_id"})
            continue
        out[pid] = {k: _clean(v or "") for k, v in rec.items() if k != "id"}
        # Free text keeps its literal value; only the structured fields use the NA convention.
        for k in ("description", "articleAttributes"):
            if k in rec:
                out[pid][k] = (rec[k] or "").strip()
    return out, problems


def check_upload(folder: str | Path, max_bytes: int, max_rows: int) -> None:
    """An uploaded batch before anything in it is read: only plain files and folders (a symbolic link could
    point at any file the worker can read, a FIFO would hang it), at most `max_bytes` in all and at most
    `max_rows` lines in styles.csv (counted in blocks, never held whole). Raises CatalogError naming the file
    and the limit; file contents are never quoted."""
    root = Path(folder)
    if root.is_symlink() or not root.is_dir():
        raise CatalogError(f"{root}: not a plain folder; upload the batch folder itself, not a link to it")
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            mode = st.st_mode
            rel = path.relative_to(root)
            if stat.S_ISLNK(mode):
                raise CatalogError(f"{root.name}/{rel}: a symbolic link; a batch must hold the files themselves "
                                   "(links are never followed)")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise CatalogError(f"{root.name}/{rel}: not a regular file; a batch holds only files and folders")
            if stat.S_ISREG(mode):
                total += st.st_size
        if total > max_bytes:
            raise CatalogError(f"{root.name}: more than {max_bytes / 2**20:.0f} MiB (landing.max_batch_mb); split "
                               "the batch into smaller uploads")
    styles = root / "styles.csv"
    if styles.is_file():
        lines = 0
        with styles.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines += block.count(b"\n")
                if lines > max_rows + 1:
                    raise CatalogError(f"{root.name}/styles.csv: more than {max_rows} rows "
                                       "(landing.max_batch_rows); split the batch into smaller uploads")


def read_catalog(folder: str | Path, require_labels: bool = True) -> CatalogRead:
    """Read a catalog folder. Raises CatalogError only when the folder as a whole is unusable."""
    folder = Path(folder)
    styles_path = folder / "styles.csv"
    if not folder.is_dir():
        raise CatalogError(f"{folder}: not a folder; expected a catalog export with styles.csv")
    if not styles_path.is_file():
        raise CatalogError(f"{styles_path}: not found; a catalog folder needs styles.csv "
                           "(optional: products.csv, images/<id>.jpg)")
    rows, problems = parse_styles(styles_path, require_labels)
    products: dict[str, dict] = {}
    if (folder / "products.csv").is_file():
        products, p_problems = parse_products(folder / "products.csv")
        problems += p_problems

    products = {normal_id(k) or k: v for k, v in products.items()}
    accepted, seen = [], set()
    for rec in rows:
        raw, pid = rec["id"], normal_id(rec["id"])
        if pid is None:
            problems.append({"file": "styles.csv", "row": rec["source_row"], "id": raw, "field": "id",
                             "reason": "bad_id (not a positive integer below 2^63 in ASCII digits)"})
            continue
        if pid in seen:
            problems.append({"file": "styles.csv", "row": rec["source_row"], "id": raw, "field": "id",
                             "reason": "duplicate_id" + (f" (same product as id {pid})" if raw != pid else "")})
            continue
        seen.add(pid)
        rec["id"] = pid
        extra = products.get(pid, {})
        for col in PRODUCT_COLUMNS:
            rec.setdefault(col, extra.get(col, ""))
        accepted.append(rec)
    for pid in products.keys() - seen:
        problems.append({"file": "products.csv", "row": None, "id": pid, "field": "id",
                         "reason": "no styles.csv row for this id"})

    frame = pd.DataFrame(accepted, columns=[*STYLE_COLUMNS, *PRODUCT_COLUMNS, "source_row"])
    frame = frame.fillna("")
    frame["id"] = frame["id"].astype(np.int64)
    for col in NUMERIC_COLUMNS:
        frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="coerce").astype(float)
    # Image path: the products.csv column when given, else the Kaggle convention images/<id>.jpg.
    default = "images/" + frame["id"].astype(str) + ".jpg"
    frame["image"] = frame["image"].where(frame["image"] != "", default)
    frame["source_row"] = frame["source_row"].astype(np.int64)
    log.info("read %d products from %s (%d problem rows)", len(frame), folder, len(problems))
    return CatalogRead(frame=frame.reset_index(drop=True), problems=problems)


def attribute_tokens(raw: str) -> list[str]:
    """articleAttributes JSON -> ['fabric=cotton', ...]; 'NA' values and bad JSON give no tokens."""
    if not raw:
        return []
    try:
        attrs = json.loads(raw)
    except json.JSONDecodeError:
        return []
    if not isinstance(attrs, dict):
        return []
    out = []
    for key, val in attrs.items():
        val = str(val).strip()
        if val and val != "NA":
            out.append(f"{key.strip().lower()}={val.lower()}")
    return out


def product_text(frame: pd.DataFrame, use_description: bool) -> list[str]:
    titles = frame[TITLE].fillna("").astype(str)
    if use_description and "description" in frame:
        return (titles + " " + frame["description"].fillna("").astype(str)).tolist()
    return titles.tolist()


# The inputs users really have, as evaluation variants: a title cut to its first words (often brand +
# gender: "Nike Men"), no title, no image, no metadata. "no_image" is applied to the images by the caller.
INPUT_VARIANTS = ("full", "cut_title", "no_title", "no_image", "no_metadata")
# The one input each variant degrades: a model that reads none of it gives the same output as on "full".
VARIANT_DEGRADES = {"full": None, "cut_title": "text", "no_title": "text", "no_image": "image",
                    "no_metadata": "metadata"}


def present(frame: pd.DataFrame, fields: list[str]) -> np.ndarray:
    """Per row, whether any of `fields` holds a value (missing columns, NaN and blanks count as absent)."""
    has = np.zeros(len(frame), dtype=bool)
    for f in fields:
        if f in frame:
            col = frame[f]
            has |= (col.notna() & (col.astype(str).str.strip() != "") & (col.astype(str) != "nan")).to_numpy()
    return has


def title_words(frame: pd.DataFrame) -> np.ndarray:
    titles = frame[TITLE] if TITLE in frame else pd.Series([""] * len(frame), index=frame.index)
    return titles.fillna("").astype(str).str.split().str.len().to_numpy(np.int64)


def degrade_frame(frame: pd.DataFrame, variant: str, metadata_fields: list[str], cut_words: int) -> pd.DataFrame:
    """A copy of `frame` with the input `variant` removes (see INPUT_VARIANTS); labels are kept."""
    if variant not in INPUT_VARIANTS:
        raise ValueError(f"unknown input variant {variant!r}; expected one of {INPUT_VARIANTS}")
    out = frame.copy()
    if variant == "cut_title":
        out[TITLE] = out[TITLE].fillna("").astype(str).str.split().str[:cut_words].str.join(" ")
    elif variant == "no_title":
        out[TITLE] = ""
    elif variant == "no_metadata":
        for f in metadata_fields:
            if f in out:
                out[f] = np.nan if pd.api.types.is_numeric_dtype(out[f]) else ""
    return out
