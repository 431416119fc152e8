"""Every Asset of the project, defined once (names must be unique per Airflow instance)."""
from __future__ import annotations

from airflow.sdk import Asset

# A validated new catalog batch has landed (extra: {"batches": [...]}) -> categorize.
NEW_CATALOG = Asset(name="deepfusion_new_catalog", uri="file:///deepfusion/landing")
# Drift crossed the thresholds in params.drift -> retrain.
RETRAIN_REQUEST = Asset(name="deepfusion_retrain_request", uri="file:///deepfusion/retrain_request")
# @champion moved to a new model version.
CHAMPION = Asset(name="deepfusion_champion", uri="models:/deepfusion@champion")
