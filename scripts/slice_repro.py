"""Run the real pipeline (`dvc repro`) on a slice of the real catalog with the tiny profile of the tests, for a
given checkout's code, and print every output's md5 from the slice's dvc.lock.

    .venv/bin/python scripts/slice_repro.py WORKDIR [--code CHECKOUT]   # CHECKOUT: default this project

Two runs, one per checkout, on the same machine, then `diff` of their printouts: how a refactoring proves that
the stages still write the same bytes before `dvc commit -f` (or, without the full outputs here,
scripts/relock_code.py) takes the new code hashes into dvc.lock.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir", type=Path, help="a new folder for the slice workspace")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose components/ and dvc.yaml run")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the tests' slice and profile, as the integration test builds them
    from tests.integration.test_pipeline_real import env, slice_workspace

    ws, code = args.workdir.resolve(), args.code.resolve()
    ws.mkdir(parents=True)
    e = {**env(), "PYTHONPATH": str(code)}
    slice_workspace(ws, code, e)
    proc = subprocess.run(["dvc", "repro"], cwd=ws, env=e, capture_output=True, text=True)
    (ws / "repro.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
        return proc.returncode
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    for stage, st in sorted(lock.items()):
        for out in st.get("outs", []):
            print(f"{stage} {out['path']} {out['md5']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
