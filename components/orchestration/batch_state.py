"""The life of one landing batch, one small JSON file per batch: <landing>/_state/<batch>.json.

    ready ──> validated ──> reported ──> categorized  (the folder then moves to <landing>/_done/)
      └──────────┴─────────────┴──────> failed        (with its reason; rejected folders sit in _failed/)

`ready` is not written: a folder with its READY marker and no state for its content *is* ready. Every state
is keyed on the md5 of the batch's files, taken before they are read, so a re-upload under the same name
(other content) starts again at ready, and content changed during a run is never recorded as processed.
A batch counts as done only once its predictions exist: `categorized` is written by categorize after its
output folder is in place, never by the drift report. The uploader can write in the landing area, so a state
file is never trusted: one we cannot read is moved to _state/_malformed/ (for the operator) and its batch
starts again at ready. Owned here so that the DAGs, monitoring and the workers of several machines agree.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
from pathlib import Path

from components.atomic_io import read_json, write_json

log = logging.getLogger(__name__)

READY = "_READY"  # written last by the uploader: a folder holding it is a ready batch
STATE_DIR = "_state"
DONE = "_done"
MALFORMED = "_malformed"
STATES = ("ready", "validated", "reported", "categorized", "failed")
# Which state may follow which, for the same content. A manual categorize run (the DAG's form) may score a
# batch that the drift DAG has not seen yet, hence ready/validated -> categorized.
NEXT = {"ready": {"validated", "failed", "categorized"},
        "validated": {"validated", "reported", "failed", "categorized"},
        "reported": {"reported", "categorized", "failed"},
        "categorized": {"categorized"},  # scored again (another model): the newest predictions count
        "failed": {"validated", "failed"}}  # the same bad content uploaded again is checked again


class TransitionError(RuntimeError):
    """A step tried to move a batch to a state its life does not allow (a bug or a race, never user input)."""


@dataclasses.dataclass(frozen=True)
class BatchState:
    batch: str
    state: str
    content_md5: str
    history: tuple[dict, ...] = ()  # [{"state", "at"}], oldest first, for this content
    reason: str = ""  # failed: why
    report: str = ""  # reported: the drift report's folder
    drift_detected: bool | None = None
    predictions: str = ""  # categorized: the output folder
    model: str = ""  # categorized: the model version that made the predictions

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "history": list(self.history)}


def state_file(landing: Path, name: str) -> Path:
    return Path(landing) / STATE_DIR / f"{name}.json"


def read_state(landing: Path, name: str) -> BatchState | None:
    """The recorded state of a batch, or None (never seen, or its file is not one we wrote)."""
    path = state_file(landing, name)
    if not path.is_file():
        return None
    try:
        raw = read_json(path)
        state = BatchState(**{**raw, "history": tuple(raw.get("history", ()))})
        if state.state not in STATES or state.batch != name or not isinstance(state.content_md5, str):
            raise ValueError(f"state {state.state!r} of batch {state.batch!r}")
        return state
    except (ValueError, TypeError, AttributeError, OSError) as exc:  # the uploader can write there
        kept = Path(landing) / STATE_DIR / MALFORMED / f"{name}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), kept)
        log.warning("landing: %s is not a state file we wrote (%s); moved to %s, batch %s starts again at ready",
                    path, type(exc).__name__, kept, name)
        return None


def status(landing: Path, name: str, content_md5: str) -> str:
    """Where this content of the batch is in its life ('ready' when nothing is recorded for it)."""
    state = read_state(landing, name)
    return state.state if state and state.content_md5 == content_md5 else "ready"


def advance(landing: Path, name: str, to: str, content_md5: str, **fields) -> BatchState:
    """Record that this content of the batch reached state `to` (atomically, with the time)."""
    if to not in STATES or to == "ready":
        raise TransitionError(f"{to!r} is not a state a step can record")
    current = read_state(landing, name)
    same = current is not None and current.content_md5 == content_md5
    before = current.state if same else "ready"
    if to not in NEXT[before]:
        raise TransitionError(f"batch {name}: {before} -> {to} is not allowed")
    history = (*(current.history if same else ()), {"state": to, "at": dt.datetime.now(dt.UTC).isoformat()})
    kept = {k: v for k, v in dataclasses.asdict(current).items() if k in ("report", "drift_detected")} if same else {}
    new = BatchState(batch=name, state=to, content_md5=content_md5, history=history, **{**kept, **fields})
    write_json(state_file(landing, name), new.to_json())
    return new


def archive(landing: Path, name: str) -> Path:
    """Move a categorized batch out of the way: <landing>/_done/<batch> (an older one of that name is replaced)."""
    src, dest = Path(landing) / name, Path(landing) / DONE / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.move(str(src), dest)
    return dest
