"""Where the champion's pipeline result is, for a service that shares no disk with the run that made it.

The review station in compose has a volume of its own and may read the DVC remote `artifacts`, nothing else (no
registry, no worker's disk). So the registry leaves it a trail in that remote (`Trail`, handed to
components.lifecycle.registry by its callers: the retrain DAG and `deepfusion registry`): `register` writes
`pointers/<model>/v<N>.json` (the run's dvc.lock, its params overrides and its name: enough to rebuild the
workspace), and `promote` and `rollback` copy the champion's to `pointers/<model>/champion.json`. The station
(`StationChampion`, handed to `deepfusion review serve`) rebuilds the workspace from it (run_workspace.checked_out:
the outputs by md5 from the remote). A project without the `artifacts` remote writes no trail: its services share
its disk and read runs/latest."""
from __future__ import annotations

import base64
import json
import logging
import shutil
from pathlib import Path

from components.lifecycle.provenance import RUN_FILE
from components.mlflow_store import RegistryError
from components.orchestration.run_workspace import (
    RUNS,
    WorkspaceError,
    checked_out,
    get_pointer,
    has_remote,
    put_pointer,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREFIX = "champion-"  # runs/champion-<model>-v<N>/: a workspace rebuilt from a pointer


def _name(model: str, which: str) -> str:
    return f"{model}/{which}.json"


def record_version(workspace: Path, model: str, version: str) -> bool:
    """At registration, from the run's workspace: what rebuilds the result `version` was registered from (its
    dvc.lock and params overrides). False without an `artifacts` remote, or without a lock (a model made outside
    the pipeline: nothing to rebuild)."""
    ws = Path(workspace)
    if not has_remote(ws, "artifacts"):
        return False
    if not (ws / "dvc.lock").is_file():
        log.warning("%s v%s: no dvc.lock in %s, so no pointer: the review station cannot show its run", model,
                    version, ws)
        return False
    run = json.loads((ws / RUN_FILE).read_text(encoding="utf-8")) if (ws / RUN_FILE).is_file() else {}
    pointer = {"model": model, "version": str(version), "run": ws.resolve().name,
               "overrides": run.get("overrides", {}), "lock": base64.b64encode((ws / "dvc.lock").read_bytes()).decode()}
    return put_pointer(workspace, _name(model, f"v{version}"), json.dumps(pointer, sort_keys=True).encode())


def record_champion(project: Path, model: str, version: str | None) -> bool:
    """Make the champion pointer name `version` (promote, rollback; rerun by each promote, so a failed write is
    mended by the next). A version registered before pointers existed has none: the old pointer stays, said in the
    log. False without an `artifacts` remote or without that version's pointer."""
    if version is None:
        return False
    data = get_pointer(project, _name(model, f"v{version}"))
    current = get_pointer(project, _name(model, CHAMPION))
    if data is None:
        if current is not None:
            log.warning("%s v%s has no pointer in the artifact store (registered before them): the review station "
                        "keeps showing the previous champion's run", model, version)
        return False
    return current == data or put_pointer(project, _name(model, CHAMPION), data)


def champion_pointer(home: Path, model: str) -> dict | None:
    data = get_pointer(home, _name(model, CHAMPION))
    return json.loads(data) if data else None


def champion_workspace(home: Path, pointer: dict) -> Path:
    """The champion's result rebuilt under HOME/runs/ (every output of its lock pulled from the remote), once per
    version; older rebuilt champions are removed."""
    run = f"{PREFIX}{pointer['model']}-v{pointer['version']}"
    ws = checked_out(home, run, pointer["overrides"], pointer["lock"])
    for old in (Path(home) / RUNS).glob(f"{PREFIX}{pointer['model']}-v*"):
        if old.name != ws.name:
            shutil.rmtree(old, ignore_errors=True)
    return ws


class Trail:
    """The registry's trail in the artifact store of `project` (the pipeline result's folder the registry works
    in): what components.lifecycle.registry calls after register, promote and rollback."""

    def __init__(self, project: Path) -> None:
        self.project = Path(project)

    def version(self, model: str, version: str) -> bool:
        try:
            return record_version(self.project, model, version)
        except WorkspaceError as exc:  # the version stands; a rerun of `register` returns it and writes this
            raise RegistryError(f"{model} v{version} is registered, but its pointer for the review station is not "
                                f"written: {exc}") from exc

    def champion(self, model: str, version: str | None) -> bool:
        try:
            return record_champion(self.project, model, version)
        except WorkspaceError as exc:  # the alias stands; the next promote (a task retry) writes the pointer
            raise RegistryError(f"@champion is v{version}, but the review station's pointer is not moved: {exc}; "
                                "rerun `deepfusion registry promote`") from exc


class StationChampion:
    """The champion's run for a review station at `home` that shares no disk with the workers."""

    def __init__(self, home: Path, model: str) -> None:
        self.home, self.model = Path(home), model

    def current(self) -> tuple[Path, dict] | None:
        """The champion's run rebuilt here, and its pointer; None before the first promotion."""
        pointer = champion_pointer(self.home, self.model)
        return None if pointer is None else (champion_workspace(self.home, pointer), pointer)

    def newer(self, shown: dict) -> dict | None:
        """The pointer of a champion other than `shown`, its run already rebuilt here; None while it is the same."""
        pointer = champion_pointer(self.home, self.model)
        if pointer is None or pointer["version"] == shown["version"]:
            return None
        champion_workspace(self.home, pointer)
        return pointer
