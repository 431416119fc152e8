"""Every number the README held before the docs split is still in the README or the docs.

    .venv/bin/python scripts/check_numbers.py                 # check (scripts/test.sh runs it)
    .venv/bin/python scripts/check_numbers.py --write 88550e6 # record the numbers of README.md at a git revision

The README of 88550e6 (856 lines) was split into a user README and the docs site; its numbers were recorded in
tests/data/readme_numbers.txt so that the check needs no git history (CI may clone shallow). A number that
moved is found wherever it went; one that was dropped fails the check with its value.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "data" / "readme_numbers.txt"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", metavar="REV", help="record the numbers of README.md at this git revision")
    args = ap.parse_args(argv)
    if args.write:
        old = subprocess.run(["git", "show", f"{args.write}:README.md"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        RECORD.write_text(f"# numbers of README.md at {args.write}, one per line\n"
                          + "\n".join(sorted(numbers(old), key=lambda s: (len(s), s))) + "\n")
        print(f"{RECORD}: {len(numbers(old))} numbers")
        return 0
    wanted = [ln for ln in RECORD.read_text().splitlines() if ln and not ln.startswith("#")]
    have = numbers("\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]))
    missing = [n for n in wanted if n not in have]
    if missing:
        print(f"{len(missing)} numbers of the old README are in neither README.md nor docs/: {' '.join(missing)}",
              file=sys.stderr)
        return 1
    print(f"all {len(wanted)} numbers of the old README are in README.md or docs/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
