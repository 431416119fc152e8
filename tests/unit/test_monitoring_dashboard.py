"""The monitoring dashboard (issue 42): every drift report and categorize run is a snapshot in an Evidently
workspace, and what the running UI serves for each panel equals the batch's own summary.json."""
from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from components.monitoring import workspace


def summary(batch: str, shift: float, labelled: bool) -> dict:
    out = {"batch": f"/landing/{batch}", "drift_detected": shift > 1,
           "signals": [{"signal": "text_embedding", "value": 0.02 * shift, "threshold": 0.02, "drifted": shift > 1},
                       {"signal": "price", "value": 0.1 * shift, "threshold": 0.3, "drifted": False},
                       {"signal": "image_brightness", "value": float("nan"), "threshold": 0.1, "drifted": False}],
           "predicted_mix": {"masterCategory": {"Apparel": 0.5 - 0.1 * shift, "Footwear": 0.5 + 0.1 * shift}}}
    if labelled:
        out["quality"] = {"articleType": {"accuracy": 0.9 - 0.05 * shift, "macro_f1": 0.8 - 0.05 * shift}}
    return out


MONTHS = {"2016-01": summary("2016-01", 0.5, True), "2016-02": summary("2016-02", 1.0, False),
          "2016-03": summary("2016-03", 2.5, True)}


def test_a_summary_becomes_the_values_the_dashboard_plots():
    values = workspace.drift_values(MONTHS["2016-03"])
    assert values["signal:text_embedding"] == pytest.approx(2.5) and values["alarm_line"] == 1.0
    assert "signal:image_brightness" not in values  # not measured: no point rather than a fake 0
    assert values["mix:Footwear"] == pytest.approx(0.75) and values["accuracy:articleType"] == pytest.approx(0.775)
    assert values["drift_detected"] == 1.0
    assert workspace.categorize_values({"products": 40, "to_review": 6}) == {"review_share": 0.15}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving(cmd: list[str], port: int, **kw) -> subprocess.Popen:
    """Start the dashboard server `cmd` and return once it answers on `port` (its output if it died first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    deadline = time.time() + 90
    while True:
        try:
            call(f"http://127.0.0.1:{port}/api/projects")
            return proc
        except OSError:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)


def call(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def ui(tmp_path):
    folder = tmp_path / "monitoring"
    for i, (month, s) in enumerate(MONTHS.items()):
        workspace.record(folder, "deepfusion", workspace.drift_values(s), tag=workspace.DRIFT_TAG, batch=month,
                         at=dt.datetime(2016, 1 + i, 15))
        workspace.record(folder, "deepfusion", workspace.categorize_values({"products": 40, "to_review": 4 + i}),
                         tag=workspace.CATEGORIZE_TAG, batch=month, at=dt.datetime(2016, 1 + i, 15, 1))
    port = free_port()
    proc = serving([sys.executable, "-c", "import sys; from components.monitoring import workspace; "
                    "workspace.serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]))", str(folder), str(port)], port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_each_panel_shows_each_months_summary(ui):
    [project] = call(f"{ui}/api/projects")
    assert project["name"] == "deepfusion"
    dash = call(f"{ui}/api/v2/dashboards/{project['id']}")
    titles = {p["title"] for p in dash["panels"]}
    assert titles == {"Drift signals against their alarm line", "Predicted top-level mix",
                      "Review-queue share", "Accuracy and macro-F1 (labelled batches)"}
    checked = 0
    for panel in dash["panels"]:
        filters = [{k: v[k] for k in ("tags", "metadata", "metric", "metric_labels")} for v in panel["values"]]
        got = call(f"{ui}/api/v2/snapshots/{project['id']}/data_series_batch", {"series_filter": filters})
        batches = [s["metadata"]["batch"] for s in got["sources"]]
        for series in got["series"]:
            column = series["params"]["column"]
            for batch, value in zip(batches, series["values"], strict=True):
                if value is None:
                    continue  # this snapshot does not carry the column (an unlabelled month)
                expected = (workspace.categorize_values({"products": 40, "to_review": 4 + list(MONTHS).index(batch)})
                            if column == "review_share" else workspace.drift_values(MONTHS[batch]))[column]
                assert value == pytest.approx(expected), (panel["title"], batch, column)
                checked += 1
        if panel["title"].startswith("Drift signals"):
            assert sorted(set(batches)) == list(MONTHS)  # every month is a point
    # 3 months x (2 signals + alarm line + 2 mix + review share) + 2 labelled months x 2 scores
    assert checked == 3 * 6 + 2 * 2
    # Read-only over HTTP: the write API wants a secret nobody was given.
    with pytest.raises(urllib.error.HTTPError) as exc:
        call(f"{ui}/api/projects", {"name": "planted"})
    assert exc.value.code in (401, 403)
