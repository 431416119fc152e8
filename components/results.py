"""`deepfusion report`: the generated results of README.md and docs/evaluation.md, from evaluate's metrics.

README gets the headline (the served model against every expert on the inputs users really have); the docs
page gets the whole evaluation (`report.comparison_table`, the same text as artifacts/evaluate/comparison.md).
Each goes between its markers, never typed by hand.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from components.atomic_io import atomic_write_bytes, read_json
from components.report import comparison_table, levels_of, pct

log = logging.getLogger(__name__)

BLOCKS = {"headline": ("<!-- headline:start -->", "<!-- headline:end -->"),
          "results": ("<!-- results:start -->", "<!-- results:end -->")}


def headline_table(results: dict) -> str:
    """One table: finest-level accuracy / macro-F1 of every model on each input variant of the test split."""
    views = results.get("inputs", {})
    if not views:
        return "No input-variant results yet: run `dvc repro`.\n"
    models = list(dict.fromkeys(m for v in views.values() for m in v))
    finest = (levels_of(results) or ("finest level",))[-1]
    lines = [f"Test split ({results.get('test_products', '?')} products, never used for tuning), {finest} "
             f"accuracy / macro-F1 in %, each input as users have it (cut title = its first words only); "
             f"we serve `{results.get('served_model', '?')}`:", "",
             "| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for view, row in views.items():
        cells = [f"{pct(row[m]['accuracy'])} / {pct(row[m]['macro_f1'])}" if m in row else "–" for m in models]
        lines.append(f"| {view} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str, where: str) -> str:
    start, end = BLOCKS[name]
    if start not in text or end not in text:
        raise SystemExit(f"{where}: markers {start} / {end} not found")
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{body}{end}", text,
                  flags=re.DOTALL)


def write(root: Path, results: dict) -> None:
    for rel, name, body in (("README.md", "headline", headline_table(results)),
                            ("docs/evaluation.md", "results", comparison_table(results))):
        path = root / rel
        atomic_write_bytes(path, replace_block(path.read_text(encoding="utf-8"), name, body, str(path)).encode())
        log.info("%s: %s block regenerated", path, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepfusion report", description=__doc__.split("\n")[0])
    ap.add_argument("--metrics", type=Path, help="evaluate's metrics.json (default: params paths.evaluate)")
    ap.add_argument("--root", type=Path, default=Path("."), help="the project folder holding README.md and docs/")
    args = ap.parse_args(argv)  # before the params: --help works anywhere
    if args.metrics is None:
        from components.config import load_params

        args.metrics = Path(load_params().paths.evaluate) / "metrics.json"
    write(args.root, read_json(args.metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
