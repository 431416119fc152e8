"""`deepfusion monitor`: the monitoring dashboard over every landed batch.

    deepfusion monitor ui [--port 8000]                     the dashboard (Evidently's UI) on 127.0.0.1
    deepfusion monitor add REPORT_DIR... [--at 2016-05-01]  add drift reports made by `deepfusion drift` or
                                                            `deepfusion replay` (the DAGs add theirs themselves)

The workspace is `paths.monitoring`; one project per registered model (`registry.model_name`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from components.atomic_io import read_json
from components.config import load_params
from components.monitoring import workspace

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add(folder: Path, model_name: str, report: Path, at: dt.datetime | None) -> str:
    summary_file = report / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"{report}: no summary.json (not a drift report folder); make one with "
                                "`deepfusion drift BATCH_DIR --output FOLDER`")
    summary = read_json(summary_file)
    when = at or dt.datetime.fromtimestamp(summary_file.stat().st_mtime, dt.UTC).replace(tzinfo=None)
    try:
        values, batch = workspace.drift_values(summary), Path(summary["batch"]).name
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{summary_file}: not a drift summary (missing or malformed {exc}); remake the report "
                         "with `deepfusion drift`") from exc
    return workspace.record(folder, model_name, values, tag=workspace.DRIFT_TAG, batch=batch, at=when,
                            extra={"report": str(report)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepfusion monitor", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    ui = sub.add_parser("ui", help="serve the monitoring dashboard")
    ui.add_argument("--host", default="127.0.0.1",
                    help="bind address (default loopback: the UI has no login; put an authenticating proxy in "
                         "front to share it)")
    ui.add_argument("--port", type=int, default=8000)
    ui.add_argument("--public", action="store_true", help="allow a non-loopback --host (no login!)")
    more = sub.add_parser("add", help="add drift report folders to the dashboard")
    more.add_argument("reports", nargs="+", type=Path)
    more.add_argument("--at", type=dt.datetime.fromisoformat,
                      help="the batches' time on the dashboard (default: when each report was written)")
    args = ap.parse_args(argv)
    params = load_params()
    folder = Path(params.paths.monitoring)
    if args.action == "ui":
        if args.host not in LOOPBACK and not args.public:
            print(f"error: --host {args.host} would serve the dashboard without a login to the network; add "
                  "--public if an authenticating proxy stands in front", file=sys.stderr)
            return 2
        print(f"monitoring dashboard of {folder}: http://{args.host}:{args.port}/", flush=True)
        workspace.serve(folder, args.host, args.port)
        return 0
    for report in args.reports:
        try:
            snapshot = add(folder, params.registry.model_name, report, args.at)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{report}: snapshot {snapshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
