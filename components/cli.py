"""`deepfusion`: one command for every user job.

    deepfusion catalog inspect EXPORT_DIR               propose the catalog schema (params.yaml catalog:) of an export
    deepfusion predict BATCH_DIR --output pred.csv      categorize a batch folder
    deepfusion search --text "red running shoes"        find products by text or by picture
    deepfusion audit                                    the catalog's suspected mislabels, most suspicious first
    deepfusion review serve | user | import | export    the review station: people decide, corrections flow back
    deepfusion drift BATCH_DIR                          drift report of a new batch against the training data
    deepfusion replay | backtest                        the catalog's own history as monthly batches; drift backtest
    deepfusion monitor ui | add                         the monitoring dashboard over every batch
    deepfusion registry register|promote|rollback|status   the MLflow model registry and its promotion gate
    deepfusion publish                                  log the pipeline's outputs to MLflow
    deepfusion report                                   regenerate the results tables of README and docs

Each subcommand is a module's `main(argv)`, imported only when it runs, so `--help` answers at once, from any
folder, before any params file is read. Logging is set up here, once, for all of them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from components.config import ConfigError

# name -> (module with main(argv), one line of help). The modules parse their own arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "catalog": ("components.catalog_inspect", "propose the catalog schema of an export (catalog inspect FOLDER)"),
    "predict": ("components.serving.predict", "categorize a batch folder (an export in the shape of params.catalog)"),
    "search": ("components.serving.search", "build the search index, or find products by text or by picture"),
    "review": ("components.review.cli", "the review station: queue, decide, export corrections (serve, user, ...)"),
    "audit": ("components.suspects", "list the catalog audit's suspected mislabels, most suspicious first"),
    "drift": ("components.monitoring.drift", "drift report of a new catalog batch against the training data"),
    "replay": ("components.monitoring.replay", "carve the catalog into monthly batches by date added"),
    "backtest": ("components.monitoring.backtest", "would the drift monitor have fired when accuracy dropped?"),
    "monitor": ("components.monitoring.monitor", "the monitoring dashboard over every batch (ui, add)"),
    "registry": ("components.lifecycle.registry", "register, promote (gate), roll back, list model versions"),
    "publish": ("components.lifecycle.publish", "log the pipeline's trained models and results to MLflow"),
    "report": ("components.results", "regenerate the results tables of README.md and docs/evaluation.md"),
}


def wiring(command: str) -> dict:
    """What a command gets from the deployment layer above it (components.orchestration), which its own layer may
    not import: the registry's trail in the artifact store, and the review station's way to the champion's run."""
    if command == "registry":
        from components.orchestration.champion_run import Trail

        return {"trail": Trail(Path.cwd())}
    if command == "review":
        from components.orchestration.champion_run import StationChampion

        return {"champion": StationChampion}
    return {}


def setup_logging(verbosity: int) -> None:
    """-q: warnings only; default: info; -v: debug. The libraries stay at warning unless -vv."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    if verbosity < 2:
        for noisy in ("mlflow", "alembic", "urllib3", "git", "matplotlib", "PIL", "evidently", "great_expectations"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepfusion", description="Multi-modal product categorization: categorize, search, audit, monitor.",
        epilog="`deepfusion COMMAND --help` for a command's options. The pipeline itself runs with `dvc repro`.")
    noise = ap.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: libraries too)")
    noise.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        # add_help=False: the command's own parser answers --help, with its own options.
        sub.add_parser(name, help=text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = parser()
    # The global options come before the command; everything after it is the command's own.
    at = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if at is None:
        ap.parse_args(argv)  # prints help or the error (exit 0 / 2)
        return 2
    opts = ap.parse_args(argv[: at + 1])
    setup_logging(-1 if opts.quiet else opts.verbose)
    module = importlib.import_module(COMMANDS[opts.command][0])
    sys.argv[0] = f"deepfusion {opts.command}"
    try:
        return int(module.main(argv[at + 1 :], **wiring(opts.command)) or 0)
    except ConfigError as exc:  # no params.yaml here, or a wrong key: the user's to fix, not a crash
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
