"""Every Asset of the project, defined once (names must be unique per Airflow instance)."""
from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from common.settings import landing
from common.triggers import LandingTrigger

# An uploader marked a batch ready in the landing area: watched by the triggerer (a scan every 15 s), so
# catalog_drift starts within seconds of an upload instead of at the next hourly poll.
LANDING_READY = Asset(name="deepfusion_landing_ready", uri="file:///deepfusion/landing_ready",
                      watchers=[AssetWatcher(name="deepfusion_landing_watcher",
                                             trigger=LandingTrigger(landing=str(landing()), poke_interval=15.0))])
# A validated new catalog batch has landed (extra: {"batches": [...]}) -> categorize.
NEW_CATALOG = Asset(name="deepfusion_new_catalog", uri="file:///deepfusion/landing")
# Drift crossed the thresholds in params.drift -> retrain.
RETRAIN_REQUEST = Asset(name="deepfusion_retrain_request", uri="file:///deepfusion/retrain_request")
# @champion moved to a new model version.
CHAMPION = Asset(name="deepfusion_champion", uri="models:/deepfusion@champion")
