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
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import CatalogSchema

log = logging.getLogger(__name__)

# The internal names of the parts a catalog's columns play (config.CatalogSchema says which column plays
# which): the reader renames at the edge, so every stage reads one shape. They are the Myntra export's own
# names, so that export passes through unchanged. Label levels and metadata keep the schema's names.
ID = "id"
TITLE = "productDisplayName"
DESCRIPTION = "description"
IMAGE = "image"
ATTRIBUTES = "articleAttributes"  # JSON object of the schema's attribute columns
ADDED = "catalogAddDate"  # when the product entered the catalog (unix seconds): replay and backtest months
ROLES = (ID, TITLE, DESCRIPTION, IMAGE, ATTRIBUTES, ADDED)
FINEST = -1  # the finest level's index in per-level lists and in (N, levels) label arrays
# The export writes "NA" (and sometimes "") for "no value"; both mean missing.
MISSING_TOKENS = frozenset({"", "NA", "N/A", "nan", "NaN", "null", "None"})
SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a string id: no path separator, no leading dot


# Reviewers' label corrections (deepfusion review export -> params paths.corrections -> ingest): one row per
# corrected level, and one per confirmed product (level "", old = new = the whole path joined by PATH_SEP).
CORRECTION_COLUMNS = ["id", "level", "old", "new", "action", "reviewer", "time", "decision"]
CORRECTIONS_HEADER = ",".join(CORRECTION_COLUMNS) + "\n"  # the file with no correction (a fresh project)
PATH_SEP = " > "
LABEL_SOURCE = "label_source"  # ingest's provenance column: export | review (a person corrected) | confirmed


class CatalogError(ValueError):
    """The catalog folder or one of its files cannot be read at all (not a single bad row)."""


@dataclass
class CatalogRead:
    frame: pd.DataFrame  # one row per accepted product: the export's columns, parts renamed (ROLES), source_row
    problems: list[dict] = field(default_factory=list)  # {file, row, id, field, reason[, kept: the row was read]}
    main_file: str = "styles.csv"  # the export's file with one row per product (params.catalog.files[0])


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


def normal_id(raw: str, id_type: str = "int") -> str | None:
    """A product id in canonical form, or None when it is not a valid id.

    int: the decimal string of a positive integer below 2^63 ('007' -> '7'; ASCII digits only: '²' passes
    str.isdigit()). string: the SKU as written (letters, digits, '.', '_', '-'; no path separator, since ids
    name image files)."""
    if id_type == "string":
        return raw if SKU.fullmatch(raw) else None
    if not raw or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return str(value) if 0 < value < 2**63 else None


def _id_rule(id_type: str) -> str:
    return ("not a positive integer below 2^63 in ASCII digits" if id_type == "int" else
            "a SKU is letters, digits, '.', '_' or '-', at most 128, starting with a letter or digit")


def parse_styles(path: Path, schema: CatalogSchema, require_labels: bool) -> tuple[list[dict], list[dict]]:
    """Parse the export's main file (one row per product). The Myntra export writes it with bare commas,
    so a title may hold commas: when the title is the last column its extra fields are joined back."""
    text = _decode(path)
    records, problems = _records(text, path)
    if not records:
        raise CatalogError(f"{path}: no header row; export the catalog again")
    header = [h.strip() for h in records[0][1]]
    records = records[1:]
    labels = [schema.label_path.column] if schema.label_path.column else list(schema.levels)
    required = [schema.id, schema.title, *(labels if require_labels else ())]
    missing = [c for c in required if c not in header]
    if missing:
        # The header is not quoted back: a file that is not a catalog (a secret, via a link) stays unread.
        raise CatalogError(f"{path}: missing column(s) {missing} in the header line ({len(header)} columns "
                           "found); params.catalog names the columns of the export (deepfusion catalog inspect "
                           "proposes them)")
    title = schema.title
    title_last = header[-1] == title
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
        rec[title] = fields[header.index(title)].strip()
        if rec[title] in MISSING_TOKENS:
            rec[title] = ""
        rec["source_row"] = lineno
        rows.append(rec)
    return rows, problems


def parse_products(path: Path, schema: CatalogSchema) -> tuple[dict[str, dict], list[str], list[dict]]:
    """Parse one of the export's further files (properly quoted), keyed by id: (rows, header, problems)."""
    text = _decode(path)
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.DictReader(io.StringIO(text))
    key = schema.id
    if reader.fieldnames is None or key not in reader.fieldnames:
        raise CatalogError(f"{path}: no {key!r} column in the header line; each file of params.catalog.files "
                           "needs the id column")
    out, problems = {}, []
    try:
        rows = list(reader)
    except csv.Error as exc:  # a field over MAX_FIELD_CHARS, a NUL byte...
        raise CatalogError(f"{path}: line {reader.line_num}: {exc}; fix that line and export again") from exc
    literal = {schema.description, *schema.attributes} - {""}
    for lineno, rec in enumerate(rows, start=2):
        if None in rec:  # more fields than the header
            problems.append({"file": path.name, "row": lineno, "id": rec.get(key), "field": "*",
                             "reason": "too_many_fields"})
            continue
        pid = (rec.get(key) or "").strip()
        if pid in out:
            problems.append({"file": path.name, "row": lineno, "id": pid, "field": "id",
                             "reason": "duplicate_id"})
            continue
        out[pid] = {k: _clean(v or "") for k, v in rec.items() if k != key}
        # Free text keeps its literal value; only the structured fields use the NA convention.
        for k in literal & set(rec):
            out[pid][k] = (rec[k] or "").strip()
    return out, [h for h in reader.fieldnames if h != key], problems


def attributes_json(values: dict[str, str]) -> str:
    """The attribute columns of one product as one JSON object (the internal ATTRIBUTES column).

    One column holding JSON objects (the Myntra export's articleAttributes) passes through as written; plain
    values become {column: value}; several columns merge."""
    if len(values) == 1:
        (col, raw), = values.items()
        if raw.strip() in MISSING_TOKENS or raw.lstrip().startswith("{"):
            return raw
    merged: dict[str, str] = {}
    for col, raw in values.items():
        raw = raw.strip()
        if raw in MISSING_TOKENS:
            continue
        try:
            obj = json.loads(raw) if raw.startswith("{") else None
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            merged.update({str(k): str(v) for k, v in obj.items()})
        else:
            merged[col] = raw
    return json.dumps(merged, ensure_ascii=False) if merged else ""


def _split_path(frame: pd.DataFrame, schema: CatalogSchema, problems: list[dict], file: str) -> pd.DataFrame:
    """One path column ("Men > Apparel > Tshirts") -> one column per level; a path of another depth is a
    problem of its row and leaves its levels blank (ingest quarantines it as missing_label)."""
    col, sep, depth = schema.label_path.column, schema.label_path.separator, len(schema.levels)
    parts = [[p.strip() for p in str(v).split(sep)] if str(v).strip() else [] for v in frame[col]]
    split = []
    for row, pid, pp in zip(frame["source_row"], frame[schema.id], parts):
        if pp and (len(pp) != depth or not all(pp)):
            problems.append({"file": file, "row": int(row), "id": pid, "field": col,
                             "reason": f"bad_label_path ({len(pp)} parts, {depth} levels in params.catalog.levels)"})
            pp = []
        split.append(pp or [""] * depth)
    out = frame.drop(columns=[col])
    at = list(frame.columns).index(col)
    for k, lvl in enumerate(schema.levels):
        out.insert(at + k, lvl, [s[k] for s in split])
    return out


def renames(schema: CatalogSchema) -> dict[str, str]:
    """Export column -> internal name, for the columns that play a part."""
    pairs = {schema.id: ID, schema.title: TITLE, schema.description: DESCRIPTION, schema.image.column: IMAGE,
             schema.added: ADDED}
    if len(schema.attributes) == 1:
        pairs[schema.attributes[0]] = ATTRIBUTES
    return {k: v for k, v in pairs.items() if k and k != v}


def check_upload(folder: str | Path, max_bytes: int, max_rows: int, main_file: str = "styles.csv") -> None:
    """An uploaded batch before anything in it is read: only plain files and folders (a symbolic link could
    point at any file the worker can read, a FIFO would hang it), at most `max_bytes` in all and at most
    `max_rows` lines in `main_file` (the catalog's first file; counted in blocks, never held whole). Raises
    CatalogError naming the file
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
    styles = root / main_file
    if styles.is_file():
        lines = 0
        with styles.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines += block.count(b"\n")
                if lines > max_rows + 1:
                    raise CatalogError(f"{root.name}/{main_file}: more than {max_rows} rows "
                                       "(landing.max_batch_rows); split the batch into smaller uploads")


def _dates(values: pd.Series) -> pd.Series:
    """Unix seconds as float: numbers as they are, dates (2016-03-01) converted; anything else missing."""
    num = pd.to_numeric(values.replace("", np.nan), errors="coerce").astype(float)
    text = values[num.isna() & (values != "")]
    if len(text):
        when = pd.to_datetime(text, errors="coerce", utc=True)
        num.loc[text.index] = (when - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return num


def to_internal(frame: pd.DataFrame, schema: CatalogSchema) -> pd.DataFrame:
    """Rows in the export's column names -> the internal names: the parts renamed, the attribute columns as
    one JSON object, numbers as floats. One path for the reader and for the served model's input rows."""
    out = frame.copy()
    if schema.attributes:
        values = [(out[c] if c in out else pd.Series("", index=out.index)).fillna("").astype(str)
                  for c in schema.attributes]
        # One column keeps its name until the rename below (our export's articleAttributes passes through).
        target = ATTRIBUTES if len(schema.attributes) > 1 else schema.attributes[0]
        out[target] = [attributes_json(dict(zip(schema.attributes, vals))) for vals in zip(*values)]
    out = out.rename(columns=renames(schema))
    for col in schema.numeric:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out


def read_catalog(folder: str | Path, schema: CatalogSchema, require_labels: bool = True) -> CatalogRead:
    """Read a catalog folder in the shape `schema` declares into the internal table: one row per product,
    the export's columns in file order with the parts renamed (see ROLES), one column per label level.
    Raises CatalogError only when the folder as a whole is unusable; bad rows are returned as problems."""
    folder = Path(folder)
    main, *others = schema.files
    main_path = folder / main
    if not folder.is_dir():
        raise CatalogError(f"{folder}: not a folder; expected a catalog export with {main}")
    if not main_path.is_file():
        raise CatalogError(f"{main_path}: not found; a catalog folder needs {main} (params.catalog.files; "
                           f"optional: {', '.join(others) or 'none'} and the images)")
    rows, problems = parse_styles(main_path, schema, require_labels)
    columns = list(rows[0]) if rows else [schema.id, schema.title]  # no rows: the parts still exist
    columns = [c for c in columns if c != "source_row"]
    extras: list[tuple[str, dict[str, dict]]] = []
    for name in others:
        if (folder / name).is_file():
            found, header, more = parse_products(folder / name, schema)
            problems += more
            extras.append((name, {normal_id(k, schema.id_type) or k: v for k, v in found.items()}))
            columns += [h for h in header if h not in columns]

    accepted, seen = [], set()
    for rec in rows:
        raw, pid = rec[schema.id], normal_id(rec[schema.id], schema.id_type)
        if pid is None:
            problems.append({"file": main, "row": rec["source_row"], "id": raw, "field": schema.id,
                             "reason": f"bad_id ({_id_rule(schema.id_type)})"})
            continue
        if pid in seen:
            problems.append({"file": main, "row": rec["source_row"], "id": raw, "field": schema.id,
                             "reason": "duplicate_id" + (f" (same product as id {pid})" if raw != pid else "")})
            continue
        seen.add(pid)
        rec[schema.id] = pid
        for _, found in extras:
            for col, val in found.get(pid, {}).items():
                rec.setdefault(col, val)
        accepted.append(rec)
    for name, found in extras:
        for pid in found.keys() - seen:
            problems.append({"file": name, "row": None, "id": pid, "field": schema.id,
                             "reason": f"no {main} row for this id"})

    # Every column the schema names exists, blank where the export has none (a batch may omit a file).
    declared = [c for c in (schema.description, schema.image.column, schema.added, *schema.categorical,
                            *schema.numeric, *schema.attributes, *schema.restates) if c]
    columns += [c for c in declared if c not in columns]
    frame = pd.DataFrame(accepted, columns=[*columns, "source_row"]).fillna("")
    plays = {schema.id, schema.title, schema.description, schema.image.column, schema.added, *schema.attributes}
    clash = sorted(c for c in frame.columns if c in ROLES and c not in plays)
    if clash:
        raise CatalogError(f"{folder}: column(s) {clash} carry a name the system gives a part of every product; "
                           "declare that part in params.catalog or rename the column in the export")
    if schema.label_path.column and schema.label_path.column in frame:
        frame = _split_path(frame, schema, problems, main)
    for lvl in schema.levels:  # an unlabelled batch: its levels are blank
        if lvl not in frame:
            frame[lvl] = ""
    frame = to_internal(frame, schema)
    for col in (TITLE, DESCRIPTION, IMAGE, ATTRIBUTES):
        if col not in frame:
            frame[col] = ""
    frame[ID] = frame[ID].astype(np.int64) if schema.id_type == "int" else frame[ID].astype(str)
    if schema.added:
        frame[ADDED] = _dates(frame[ADDED].astype(str).replace("nan", ""))
    # Image path: the column's value (under image.root) when given, else image.pattern with the id.
    given = frame[IMAGE].astype(str)
    if schema.image.root:
        given = given.where(given == "", schema.image.root.rstrip("/") + "/" + given)
    if schema.image.pattern:
        head, tail = schema.image.pattern.split("{id}", 1)
        default = head + frame[ID].astype(str) + tail
        given = given.where(given != "", default)
    frame[IMAGE] = given
    frame["source_row"] = frame["source_row"].astype(np.int64)
    log.info("read %d products from %s (%d problem rows)", len(frame), folder, len(problems))
    return CatalogRead(frame=frame.reset_index(drop=True), problems=problems, main_file=main)


def ids_array(ids) -> np.ndarray:
    """Product ids as an array .npz files hold without pickling: int64 for integer ids, unicode for SKUs."""
    arr = np.asarray(ids)
    return arr.astype(np.int64) if arr.dtype.kind in "iu" else arr.astype(str)


def level_key(level: str) -> str:
    """A level's short name in metric names: a trailing Category/Type dropped, lower case (masterCategory ->
    master, articleType -> article, department -> department)."""
    return re.sub(r"(Category|Type)$", "", level).lower() or level.lower()


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
    if use_description and DESCRIPTION in frame:
        return (titles + " " + frame[DESCRIPTION].fillna("").astype(str)).tolist()
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


def read_corrections(path: str | Path, schema: CatalogSchema) -> pd.DataFrame:
    """The corrections file (empty table when there is none). Raises CatalogError naming the file, the row and
    the field when it is not one `deepfusion review export` wrote."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=CORRECTION_COLUMNS)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not a readable CSV ({exc}); rewrite it with `deepfusion review export`") from exc
    missing = [c for c in CORRECTION_COLUMNS if c not in table.columns]
    if missing:
        raise CatalogError(f"{path}: columns {missing} missing; expected {CORRECTION_COLUMNS} "
                           "(`deepfusion review export` writes them)")
    for i, r in table.iterrows():
        if r["level"] not in ("", *schema.levels):
            raise CatalogError(f"{path} row {i + 2}: level {r['level']!r} is not one of the catalog's levels "
                               f"{list(schema.levels)}; export again with the current params")
        if normal_id(r["id"], schema.id_type) is None:
            raise CatalogError(f"{path} row {i + 2}: id {r['id']!r} is not a valid product id")
        if r["level"] and not r["new"].strip():
            raise CatalogError(f"{path} row {i + 2}: field new is empty; a correction names the new label")
    table["id"] = [normal_id(v, schema.id_type) for v in table["id"]]
    return table[CORRECTION_COLUMNS]
