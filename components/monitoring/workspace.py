"""Evidently, touched here only: each drift report's verdict-free statistics section, and the monitoring
workspace where every report and every categorize run also becomes a snapshot, so that people see the drift
signals, the predicted category mix, the review-queue share and (for labelled batches) accuracy move over
batches and weeks on one dashboard (`deepfusion monitor ui`, Evidently's own UI, served locally).

How our numbers enter the snapshots: they are not Evidently metrics (the drift signals are our calibrated
statistics, `summary.json`), so each snapshot is computed on a one-row dataset holding the batch's values, one
column each, and summarised by Evidently's `MeanValue`, which over one row is the value itself. The dashboard
panels plot those series; nothing is recomputed, so every point equals its `summary.json`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic_io import write_json
from components.monitoring import drift_signals as sig

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry: never from our workers

# ValueStats' test slots, all empty: Evidently then adds no test (no verdict) of its own. (Passing them is also
# what makes include_tests=False render: 0.7.23 looks a categorical column's RowCount up with tests=None.)
NO_TESTS = {k: [] for k in ("row_count_tests", "missing_values_count_tests", "min_tests", "max_tests", "mean_tests",
                            "std_tests", "q25_tests", "q50_tests", "q75_tests", "unique_values_count_tests")}
ALARM = "alarm_line"
METRIC = "evidently:metric_v2:MeanValue"
DRIFT_TAG, CATEGORIZE_TAG = "drift", "categorize"


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, skipped: dict[str, str], signals: sig.Signals):
    """Evidently's per-column statistics and distributions of the measurable columns, training reference
    beside the batch, with no drift verdict of its own: its DataDriftPreset tests (Jensen-Shannon in base e,
    missing values dropped, fixed thresholds, no calibration) would put a second, disagreeing answer on the
    page next to ours (`summary.json`)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import ValueStats

    cat_cols = [c for c in signals.categorical if c not in skipped]
    num_cols = [c for c in signals.numeric if c not in skipped]
    defn = DataDefinition(numerical_columns=num_cols, categorical_columns=cat_cols)
    report = Report([ValueStats(c, include_tests=False, **NO_TESTS) for c in cat_cols + num_cols])
    with np.errstate(divide="ignore", invalid="ignore"):
        return report.run(current_data=Dataset.from_pandas(cur[cat_cols + num_cols], data_definition=defn),
                          reference_data=Dataset.from_pandas(ref[cat_cols + num_cols], data_definition=defn))


# --- what a snapshot holds (pure) ---------------------------------------------------------------------------

def drift_values(summary: dict) -> dict[str, float]:
    """The numbers of one drift report that the dashboard plots, by column name: each signal as a multiple of
    its alarm threshold (1.0 = the alarm line, the same for every signal), the verdict, the predicted category
    mix, and accuracy / macro-F1 per level when the batch came labelled."""
    out: dict[str, float] = {ALARM: 1.0, "drift_detected": float(bool(summary["drift_detected"]))}
    for s in summary["signals"]:
        if s.get("threshold") and np.isfinite(s["threshold"]) and np.isfinite(s["value"]):
            out[f"signal:{s['signal']}"] = float(s["value"]) / float(s["threshold"])
    # The mix is drawn per top-level class (a handful of lines, not 117): the one level drift.run records.
    for cls, share in next(iter(summary.get("predicted_mix", {}).values()), {}).items():
        out[f"mix:{cls}"] = float(share)
    for lvl, q in summary.get("quality", {}).items():
        for k in ("accuracy", "macro_f1"):
            if q.get(k) is not None and np.isfinite(q[k]):
                out[f"{k}:{lvl}"] = float(q[k])
    return out


def categorize_values(result: dict) -> dict[str, float]:
    """The share of a categorize run's products that went to the review queue."""
    return {"review_share": result["to_review"] / result["products"] if result["products"] else 0.0}


def panels(columns: set[str]) -> list[tuple[str, str, list[str]]]:
    """(title, description, columns) of each dashboard panel, from the columns the snapshots hold."""
    def having(prefix: str) -> list[str]:
        return sorted(c for c in columns if c.startswith(prefix))

    out = [("Drift signals against their alarm line",
            "each signal / its calibrated threshold: above 1.0 (the alarm line) the signal fires",
            [*having("signal:"), ALARM]),
           ("Predicted top-level mix", "share of each batch's products by predicted top-level category",
            having("mix:")),
           ("Review-queue share", "share of a categorize run's products sent to review", having("review_share")),
           ("Accuracy and macro-F1 (labelled batches)", "per level, on the batch's own labels",
            [c for lvl in sorted({c.split(":", 1)[1] for c in having("accuracy:")})
             for c in (f"accuracy:{lvl}", f"macro_f1:{lvl}") if c in columns])]
    return [p for p in out if p[2] and p[2] != [ALARM]]


# --- the workspace (I/O) ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Workers of one host record at once: one writer at a time (a project must not be created twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _project(ws, name: str):
    found = [p for p in ws.search_project(name) if p.name == name]
    if found:
        return found[0]
    project = ws.create_project(name)
    project.description = f"DeepFusion monitoring of the registered model {name}: one snapshot per landed batch"
    project.save()
    return project


def record(folder: str | Path, model_name: str, values: dict[str, float], *, tag: str, batch: str,
           at: dt.datetime | None = None, extra: dict[str, str] | None = None) -> str:
    """Add one snapshot (the batch's values) to the model's project and refresh its dashboard; returns the
    snapshot id. `at`: the batch's time on the dashboard (default: now)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace

    folder = Path(folder)
    cols = sorted(values)
    row = pd.DataFrame({c: [float(values[c])] for c in cols})
    report = Report([MeanValue(column=c) for c in cols])
    snapshot = report.run(current_data=Dataset.from_pandas(row, data_definition=DataDefinition(numerical_columns=cols)),
                          timestamp=at or dt.datetime.now(dt.UTC).replace(tzinfo=None), tags=[tag],
                          metadata={"batch": batch, **(extra or {})})
    with _locked(folder):
        ws = Workspace(str(folder))
        project = _project(ws, model_name)
        snapshot_id = ws.add_run(project.id, snapshot).id
        known_file = folder / f".columns-{project.id}.json"
        known = set(json.loads(known_file.read_text())) if known_file.is_file() else set()
        if not set(cols) <= known:  # a new signal, class or level: the panels grow with it
            known |= set(cols)
            project.dashboard.clear_dashboard()
            for title, description, columns in panels(known):
                tags = [CATEGORIZE_TAG] if columns == ["review_share"] else [DRIFT_TAG]
                project.dashboard.add_panel(line_plot_panel(title, [
                    PanelMetric(legend=c, metric=METRIC, metric_labels={"column": c}, tags=tags) for c in columns],
                    description=description), tab="Monitoring")
            write_json(known_file, sorted(known))
    return str(snapshot_id)


def drop_project(folder: str | Path, name: str) -> bool:
    """Delete a project with its snapshots (a backtest rerun replaces its months, never doubles them)."""
    from evidently.ui.workspace import Workspace

    folder = Path(folder)
    if not folder.is_dir():
        return False
    with _locked(folder):
        ws = Workspace(str(folder))
        found = [p for p in ws.search_project(name) if p.name == name]
        for project in found:
            ws.delete_project(project.id)
            (folder / f".columns-{project.id}.json").unlink(missing_ok=True)
    return bool(found)


def serve(folder: str | Path, host: str, port: int) -> None:
    """Evidently's UI on the workspace (its pages and scripts ship with the package: nothing from a CDN). Its
    write API takes a secret that nobody is given: over HTTP the dashboard is read-only, snapshots come only
    through `record`."""
    from evidently.ui.service.app import run_local

    Path(folder).mkdir(parents=True, exist_ok=True)
    run_local(host=host, port=port, workspace=str(folder), secret=secrets.token_hex(32))
