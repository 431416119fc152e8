"""The landing area as an event source: catalog_drift starts seconds after an uploader marks a batch ready,
instead of at the next hourly poll (which stays, as the fallback for anything an event missed)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

# The batch life's own names; batch_state imports nothing heavy (the landing module would bring pandas into
# every DAG parse and into the triggerer).
from components.orchestration.batch_state import READY, STATE_DIR


def new_ready_batches(landing: Path, announced: dict[str, int]) -> list[str]:
    """Batches marked ready since they were last announced or processed: a `_READY` marker newer than the
    batch's state file and than the last announcement of that name. Updates `announced`. Cheap: a directory
    listing and a few stats (no hashing: the DAG run does the real work)."""
    found = []
    try:
        entries = sorted(os.scandir(landing), key=lambda e: e.name)
    except OSError:  # not there yet, or unreadable for a moment: the next poll looks again
        return []
    for entry in entries:
        if entry.name.startswith(("_", ".")) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            ready = os.stat(Path(entry.path) / READY).st_mtime_ns
        except OSError:
            continue  # still uploading
        try:
            processed = os.stat(landing / STATE_DIR / f"{entry.name}.json").st_mtime_ns
        except OSError:
            processed = 0
        if ready > max(processed, announced.get(entry.name, 0)):
            announced[entry.name] = ready
            found.append(entry.name)
    return found


class LandingTrigger(BaseEventTrigger):
    """Fires one event per scan that finds newly ready batches (payload: their names). Runs for as long as the
    triggerer does; a restarted triggerer announces once more what is ready and unprocessed (catalog_drift is
    idempotent, so that costs one short run at most)."""

    def __init__(self, landing: str, poke_interval: float = 15.0) -> None:
        super().__init__()
        self.landing, self.poke_interval = landing, poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"landing": self.landing,
                                                                       "poke_interval": self.poke_interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced: dict[str, int] = {}
        while True:
            batches = await asyncio.to_thread(new_ready_batches, Path(self.landing), announced)
            if batches:
                self.log.info("landing: %d batch(es) ready: %s", len(batches), ", ".join(batches))
                yield TriggerEvent({"batches": batches})
            await asyncio.sleep(self.poke_interval)
