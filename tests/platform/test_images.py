"""The image for real: `scripts/images.sh build` (Docker engine started and the base image made by the script when
needed), then `airflow version` and a prediction inside it as the non-root user. Marker `platform` (needs root for
dockerd): `pytest -m platform tests/platform/test_images.py`, about 5 minutes on 2 cores for a first build."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, train_tiny_stack

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def images(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "images.sh"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_image_builds_and_predicts_as_non_root(tmp_path):
    build = images("build")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(build.stdout.splitlines()[-1])  # "[images] built deepfusion:latest in N s (size)"
    params, data, _ = train_tiny_stack(tmp_path)
    smoke = images("smoke", str(Path(params.paths.stack)), str(data), timeout=600)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    assert "user deepfusion" in smoke.stdout and "\n3.3" in smoke.stdout  # airflow version, not as root
    out = Path(smoke.stdout.strip().splitlines()[-1].rsplit(" in ", 1)[1])
    pred = pd.read_csv(out)
    assert len(pred) == len(pd.read_csv(data / "styles.csv")) and (pred["status"] == "ok").mean() > 0.9
    assert set(pred.columns) >= {"id", "masterCategory", "subCategory", "articleType"}
