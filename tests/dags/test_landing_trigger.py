"""The landing area's event source (issue 42: a report arrived up to an hour after an upload): the trigger
announces a batch once, seconds after `_READY`, and again only after a re-upload; catalog_drift runs on its
events with the hourly poll kept as the fallback."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from tests.conftest import make_catalog


@pytest.fixture
def trigger_mod(airflow_env):
    from common import triggers

    return triggers


def ready(folder, when: float | None = None):
    (folder / "_READY").write_text("")
    if when is not None:
        os.utime(folder / "_READY", (when, when))


def test_a_ready_batch_is_announced_once_and_again_after_a_reupload(trigger_mod, tmp_path):
    area = tmp_path / "landing"
    batch = make_catalog(area / "2017-03", n=12)
    announced: dict[str, int] = {}
    assert trigger_mod.new_ready_batches(area, announced) == []  # still uploading
    ready(batch, time.time() - 10)
    assert trigger_mod.new_ready_batches(area, announced) == ["2017-03"]
    assert trigger_mod.new_ready_batches(area, announced) == []  # announced: not again
    # Processed since (its state file is newer than the marker): a restarted triggerer does not announce it.
    (area / "_state").mkdir()
    (area / "_state" / "2017-03.json").write_text(json.dumps({"state": "reported"}))
    os.utime(area / "_state" / "2017-03.json", (time.time() - 5, time.time() - 5))
    assert trigger_mod.new_ready_batches(area, {}) == []
    ready(batch)  # the team re-uploads and marks it ready again
    assert trigger_mod.new_ready_batches(area, announced) == ["2017-03"]
    (area / "_failed").mkdir()
    (area / "linked").symlink_to(batch, target_is_directory=True)  # never a batch
    assert trigger_mod.new_ready_batches(area, announced) == []


def test_the_trigger_fires_seconds_after_an_upload(trigger_mod, tmp_path):
    from airflow.triggers.base import BaseEventTrigger

    area = tmp_path / "landing"
    area.mkdir()
    trigger = trigger_mod.LandingTrigger(landing=str(area), poke_interval=0.05)
    assert isinstance(trigger, BaseEventTrigger)  # what an AssetWatcher accepts
    path, kwargs = trigger.serialize()
    assert path == "common.triggers.LandingTrigger" and kwargs == {"landing": str(area), "poke_interval": 0.05}

    async def scenario():
        events = trigger.run()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        assert not first.done()  # nothing ready: no event
        ready(make_catalog(area / "2017-04", n=12))
        event = await asyncio.wait_for(first, timeout=5)
        second = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)
        assert not second.done()  # the same batch is not announced twice
        second.cancel()
        return event

    t0 = time.monotonic()
    event = asyncio.run(scenario())
    assert event.payload == {"batches": ["2017-04"]} and time.monotonic() - t0 < 5


def test_catalog_drift_runs_on_landing_events_with_an_hourly_fallback(airflow_env):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule

    bag = DagBag(dag_folder=str(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]))
    dag = bag.dags["catalog_drift"]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 * * * *"  # the hourly fallback
    [asset] = dag.timetable.asset_condition.objects
    assert asset.name == "deepfusion_landing_ready"
    [watcher] = asset.watchers
    assert type(watcher.trigger).__name__ == "LandingTrigger"
