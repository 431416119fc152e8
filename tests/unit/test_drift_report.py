"""One verdict per report: where Evidently's default drift test and our calibrated decision disagree, the page
shows only ours (Evidently's part carries statistics and distributions, no verdict)."""
from __future__ import annotations

import numpy as np

from components.monitoring import drift, workspace
from components.monitoring import drift_signals as sig
from tests.unit.test_drift_signals import SIGNALS, TYPES, described

VERDICTS = ("Drift is detected", "Drift is NOT detected", "Drifted Columns", "Drift Score", "drift detection threshold")


def evidently_default_verdicts(ref, cur) -> dict[str, bool]:
    """What Evidently's own DataDriftPreset decides per column (the page we used to show)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = SIGNALS.categorical + SIGNALS.numeric
    defn = DataDefinition(numerical_columns=SIGNALS.numeric, categorical_columns=SIGNALS.categorical)
    with np.errstate(divide="ignore", invalid="ignore"):
        snap = Report([DataDriftPreset(columns=cols)]).run(
            current_data=Dataset.from_pandas(cur[cols], data_definition=defn),
            reference_data=Dataset.from_pandas(ref[cols], data_definition=defn))
    out = {}
    for m in snap.dict()["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            out[cfg["column"]] = float(m["value"]) > float(cfg["threshold"])
    return out


def test_the_page_shows_only_our_verdict_where_evidently_would_disagree():
    rng = np.random.default_rng(0)
    ref = sig.prepare(described(1500, rng), TYPES, pca_components=4, seed=0, signals=SIGNALS)
    calib = sig.calibrate(sig.null_values(ref, described(1500, rng), 200, 100, seed=1), 0.05, 200)
    cur = described(200, np.random.default_rng(11), brightness=0.79)  # photos 0.2 std darker
    values, skipped = sig.measure(ref, cur, seed=3)
    summary = {**sig.decide(ref, cur, values, skipped, calib), "batch": "b", "products": 200,
               "reference_products": 1500}
    ours = {s["signal"]: s["drifted"] for s in summary["signals"]}
    theirs = evidently_default_verdicts(ref.frame, cur)
    disagree = [c for c in theirs if c in ours and theirs[c] != ours[c]]
    assert "image_brightness" in disagree  # Evidently's fixed 0.1 on normed Wasserstein fires; our null does not

    section = workspace.evidently_report(ref.frame, cur, skipped, SIGNALS)
    page = drift.report_html(summary, section.get_html_str(as_iframe=False))
    start = page.index("<style>" + drift.DECISION_CSS)  # ours; Evidently has <style> tags of its own
    end = page.index("</section>", start) + len("</section>")
    ours_part, evidently_part = page[start:end], page[:start] + page[end:]
    assert not any(v in evidently_part for v in VERDICTS)  # head, scripts and widget data included
    assert "image_brightness" in evidently_part  # its distribution is still shown
    row = ours_part.split("<td>image_brightness</td>", 1)[1].split("</tr>", 1)[0]
    assert "normal" in row and "drifted" not in row
    assert "#deepfusion-decision table" in ours_part
