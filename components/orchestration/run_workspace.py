"""A run-scoped DVC workspace for one retrain run, so a DAG run never edits the project's tracked files.

A retrain run's params (the form's choices, the GPU profile) are overrides of the tracked `params.yaml`. Each task
of the run materialises the same workspace under `<home>/runs/<run id>/`: the pipeline definition and code copied
from the project, `params.yaml` with the run's overrides merged in, the catalog `data/` linked read-only, and the
project's DVC cache and remotes (URLs made absolute). Unchanged stages are checked out from the cache instead of
rerunning. The run's `dvc.lock` travels from task to task as an XCom (`lock` prints it), so a task on another
machine rebuilds the workspace and pulls the outputs it needs from the `artifacts` remote: the workers need not
share a disk.

Stages that do not depend on each other run at the same time (stage_graph), possibly on one machine: each stage
task works in a folder of its own, `runs/<run>@<stage>/` (two `dvc repro` in one folder would fight over its lock
and its dvc.lock). A stage task hands on only its own stage's entry, and each task starts from the merge of the
entries of every stage before it (`merge_locks`: each entry comes from the task that ran it; entries two locks both
carry must agree). Publish and register work in `runs/<run>/` with the entries of every stage.

    python -m components.orchestration.run_workspace materialize   # env RUN_SPEC (json), RUN_LOCK (base64 locks,
                                                                   # space-separated, optional), RUN_STAGE (optional)
    python -m components.orchestration.run_workspace lock          # the current folder's dvc.lock (RUN_STAGE set:
                                                                   # that stage's entry), base64 on one line
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from configobj import ConfigObj

from components.atomic_io import atomic_write_bytes
from components.catalog import CORRECTIONS_HEADER
from components.config import ConfigError, deep_merge, load_raw, params_from_dict
from components.lifecycle.provenance import RUN_FILE, data_md5

RUNS = "runs"  # under the project home; listed in .dvcignore, .gitignore and .dockerignore
STAGE_SEP = "@"  # runs/<run>@<stage>: a stage task's own folder
KEEP_RUNS = 3  # run workspaces kept besides the current one (outputs stay in the DVC cache anyway)
LATEST = "latest"  # runs/latest -> the workspace of the last run whose stages all finished (set by publish)
COPIED = ("dvc.yaml", "dvc.lock", ".dvcignore")  # not data.dvc: data/ is linked from the project
CODE = ("components",)
LINKED = ("data",)  # read-only inputs: linked, never copied


class WorkspaceError(RuntimeError):
    """The run's workspace cannot be made (missing project files, bad spec)."""


def run_folder(home: Path, run_id: str, stage: str | None = None) -> Path:
    """The run's folder under runs/: a portable name from any run id. Airflow run ids carry ':' and '+'
    ("manual__2026-11-30T19:00:00+00:00"), and one triggered through the API can be anything ("..", "a/b", a
    thousand characters): only letters, digits, '_' and '-' are kept (no dot, so never "." or ".."), cut to 80,
    and a changed or cut id gets a digest of the original so two ids never share a folder."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", run_id)[:80]
    if safe != run_id or not safe:
        safe = f"{safe}-{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"
    if stage is not None:  # '@' never occurs in a run's own folder name: no stage folder is another run's
        safe += STAGE_SEP + re.sub(r"[^A-Za-z0-9_-]", "_", stage)
    return Path(home) / RUNS / safe


def merge_locks(locks: list[bytes]) -> bytes:
    """One dvc.lock from those of parallel branches of a run: the union of their stage entries. The branches start
    from one upstream lock, so a stage in two of them has one entry; two different ones mean the run's tasks
    disagree on a result (a stage ran twice), and nothing is made of them."""
    if len(locks) == 1:
        return locks[0]
    schema, stages, origin = None, {}, {}
    for i, raw in enumerate(locks):
        data = yaml.safe_load(raw) or {}
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            raise WorkspaceError(f"lock {i + 1} of {len(locks)} is not a dvc.lock (no `stages` mapping)")
        schema = schema or data.get("schema")
        for name, entry in (data.get("stages") or {}).items():
            if name in stages and stages[name] != entry:
                raise WorkspaceError(f"stage {name}: locks {origin[name] + 1} and {i + 1} of the run's parallel "
                                     "branches record different results; rerun the retrain (a task ran it twice)")
            stages.setdefault(name, entry)
            origin.setdefault(name, i)
    return yaml.safe_dump({"schema": schema or "2.0", "stages": stages}, sort_keys=False).encode()


def decode_locks(locks: str | list[str] | None) -> bytes | None:
    """The run's lock so far from its upstream tasks' XComs (base64, space-separated or a list; empty ones skipped)."""
    parts = locks.split() if isinstance(locks, str) else [p for p in (locks or []) if p]
    if not parts:
        return None
    return merge_locks([base64.b64decode(p) for p in parts])


def dvc_config(home: Path) -> str:
    """The run workspace's .dvc/config: the project's remotes with absolute URLs, its cache, no git."""
    dvc = Path(home) / ".dvc"
    src = ConfigObj(str(dvc / "config"), encoding="utf-8")
    if (dvc / "config.local").is_file():
        src.merge(ConfigObj(str(dvc / "config.local"), encoding="utf-8"))
    out = ConfigObj()
    core = dict(src.get("core", {}))
    core.update({"no_scm": "true", "analytics": "false"})
    out["core"] = core
    # The project's cache, wherever the user put it (`dvc cache dir`, e.g. a shared disk; relative paths are
    # relative to .dvc/), so the run's outputs land where the next run and `dvc repro` by hand find them.
    # Link type: the user's, else hard links (checking a 1 GB output out of the cache then costs nothing;
    # DVC protects cache files), else copies where the cache is on another filesystem (compose: a volume of its
    # own). Never symbolic links: MLflow refuses to log a model file that resolves outside its folder.
    cache = dict(src.get("cache", {}))
    cache_dir = os.path.expanduser(cache.get("dir", "cache"))
    cache["dir"] = str((dvc / cache_dir).resolve())  # an absolute dir stays as it is
    cache.setdefault("type", "reflink,hardlink,copy")
    out["cache"] = cache
    for section, values in src.items():
        if section.startswith("remote "):
            values = dict(values)
            url = values.get("url", "")
            if url and "://" not in url and not os.path.isabs(url):
                values["url"] = str((dvc / url).resolve())  # relative URLs are relative to .dvc/
            out[section] = values
    return "\n".join(out.write()) + "\n"


def _create(home: Path, ws: Path, overrides: dict) -> None:
    if not (home / "dvc.yaml").is_file() or not (home / ".dvc").is_dir():
        raise WorkspaceError(f"{home}: not a DVC project (dvc.yaml and .dvc/ expected); set DEEPFUSION_HOME")
    merged = deep_merge(load_raw(home / "params.yaml"), overrides)
    params_from_dict(merged)  # a bad override fails here, naming the key, before any stage runs
    # One MLflow store for the project: a run logs and registers where serving and drift look, not beside itself.
    db = Path(merged["paths"]["mlflow_db"])
    merged["paths"]["mlflow_db"] = str(db if db.is_absolute() else home / db)
    tmp = ws.with_name(ws.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".dvc").mkdir(parents=True)
    (tmp / ".dvc" / "config").write_text(dvc_config(home), encoding="utf-8")
    (tmp / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    # The catalog version the run trains on, for provenance tags (data.dvc itself stays out: data/ is linked).
    run = {"overrides": overrides, "data_md5": data_md5(home / "data.dvc")}
    (tmp / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    for name in COPIED:
        if (home / name).is_file():
            shutil.copy2(home / name, tmp / name)
    for name in CODE:
        shutil.copytree(home / name, tmp / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in LINKED:  # linked even before it exists: the ingest task pulls data.dvc into the project first
        os.symlink((home / name).resolve(), tmp / name)
    # The reviewers' corrections as they are now: copied, so the run trains on one version of them throughout.
    corrections = Path(merged["paths"]["corrections"])
    if not corrections.is_absolute():
        (tmp / corrections).parent.mkdir(parents=True, exist_ok=True)
        if (home / corrections).is_file():
            shutil.copy2(home / corrections, tmp / corrections)
        else:  # a project from before the review station: no corrections
            (tmp / corrections).write_text(CORRECTIONS_HEADER, encoding="utf-8")
    try:
        tmp.rename(ws)
    except OSError:  # another task of the run made it first: theirs is the same
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(home: Path, run_id: str, overrides: dict, lock: str | list[str] | None = None,
                stage: str | None = None) -> Path:
    """The run's workspace (made once per machine; a stage task's own with `stage`), with `lock` (the run's
    dvc.lock so far: the XComs of the upstream tasks, merged) written in."""
    home = Path(home).resolve()
    ws = run_folder(home, run_id, stage)
    if not (ws / ".dvc").is_dir():
        ws.parent.mkdir(parents=True, exist_ok=True)
        _create(home, ws, overrides)
    merged = decode_locks(lock)
    if merged:
        atomic_write_bytes(ws / "dvc.lock", merged)
    return ws


def has_remote(ws: Path, name: str) -> bool:
    """Whether the DVC config of `ws` (config.local included: the compose entrypoint writes the remote there)
    names the remote."""
    files = [Path(ws) / ".dvc" / f for f in ("config", "config.local")]
    return any(f"['remote \"{name}\"']" in f.read_text() for f in files if f.is_file())


def checked_out(home: Path, run_id: str, overrides: dict, lock: str | list[str] | None) -> Path:
    """The run's workspace with every output of its dvc.lock in place: pulled from the `artifacts` remote when
    one is configured, else checked out of the (shared) cache. For the steps after the stages (publish, register)."""
    ws = materialize(home, run_id, overrides, lock)
    dvc = str(Path(sys.executable).parent / "dvc")
    cmd = [dvc, "pull", "-q", "-r", "artifacts"] if has_remote(ws, "artifacts") else [dvc, "checkout", "-q"]
    subprocess.run([*cmd, "--allow-missing"], cwd=ws, check=True, timeout=3600)
    return ws


REFERENCE = ".reference"  # runs/.reference/<digest>/: outputs fetched by md5 (a registered model's training data)


def fetch_outputs(home: Path, outs: dict[str, str]) -> Path:
    """A folder holding the files `outs` ({path: md5}, as a dvc.lock recorded them), pulled from the DVC remote
    `artifacts` (checked out of the local cache when it has them): how a worker that shares no disk with the run
    that made them gets them. Made once per set of files; an interrupted pull leaves no folder behind."""
    home = Path(home).resolve()
    key = hashlib.sha1(json.dumps(outs, sort_keys=True).encode()).hexdigest()[:16]
    folder = home / RUNS / REFERENCE / key
    if folder.is_dir():
        return folder
    tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".dvc").mkdir(parents=True)
    (tmp / ".dvc" / "config").write_text(dvc_config(home), encoding="utf-8")
    for path, md5 in outs.items():
        name = Path(path).name
        out = {"md5": md5, "path": name, "hash": "md5"}  # `hash: md5`: DVC 3's hashing, as dvc.lock records it
        (tmp / f"{name}.dvc").write_text(yaml.safe_dump({"outs": [out]}), encoding="utf-8")
    dvc = str(Path(sys.executable).parent / "dvc")
    cmd = [dvc, "pull", "-r", "artifacts"] if has_remote(tmp, "artifacts") else [dvc, "checkout"]
    try:
        subprocess.run(cmd, cwd=tmp, check=True, timeout=3600, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkspaceError(f"could not fetch {', '.join(outs)} from the DVC remote `artifacts` "
                             f"({(exc.stderr or exc.stdout or '').strip()[-500:]}); is the artifact store up, and did "
                             "the run that made them push them?") from exc
    try:
        tmp.rename(folder)
    except OSError:  # another task fetched the same files first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


POINTERS = "pointers"  # <remote>/pointers/...: small named files beside the remote's content-addressed outputs


def _remote_fs(project: Path, remote: str):
    """(DVC filesystem, root path) of a remote of `project`'s DVC config (config.local included); None when the
    project has no such remote (its services share its disk)."""
    from dvc.config import Config
    from dvc.config import ConfigError as DvcConfigError
    from dvc.fs import get_cloud_fs

    if not has_remote(project, remote):
        return None
    try:
        config = Config(dvc_dir=str(Path(project) / ".dvc"))
        cls, kwargs, root = get_cloud_fs(config, name=remote)
    except DvcConfigError as exc:
        raise WorkspaceError(f"{Path(project) / '.dvc'}: the DVC config of remote {remote!r} is unusable ({exc})") \
            from exc
    return cls(**kwargs), root


def put_pointer(project: Path, name: str, data: bytes, remote: str = "artifacts") -> bool:
    """Write `data` as `<remote>/pointers/<name>`, whole or not at all (a local rename, one HTTP PUT, one S3
    object); False when `project` has no such remote."""
    found = _remote_fs(project, remote)
    if found is None:
        return False
    fs, root = found
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "pointer"
        local.write_bytes(data)
        try:
            fs.put_file(str(local), fs.join(root, POINTERS, *name.split("/")))
        except Exception as exc:  # noqa: BLE001 (aiohttp, botocore, OSError: whatever the remote's library raises)
            raise WorkspaceError(f"could not write {POINTERS}/{name} to the DVC remote `{remote}` "
                                 f"({type(exc).__name__}: {str(exc)[:300]}); is the store up and is this the "
                                 "writers' password? Rerun the step when it is") from exc
    return True


def get_pointer(project: Path, name: str, remote: str = "artifacts") -> bytes | None:
    """`<remote>/pointers/<name>`, or None when it does not exist (or `project` has no such remote)."""
    found = _remote_fs(project, remote)
    if found is None:
        return None
    fs, root = found
    try:
        return fs.cat_file(fs.join(root, POINTERS, *name.split("/")))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 (as above)
        raise WorkspaceError(f"could not read {POINTERS}/{name} from the DVC remote `{remote}` "
                             f"({type(exc).__name__}: {str(exc)[:300]}); is the store up?") from exc


def mark_latest(home: Path, ws: Path) -> None:
    """Point runs/latest at `ws` (atomically: a reader sees the old or the new result, never none)."""
    link = Path(home) / RUNS / LATEST
    if Path(ws).resolve().parent != link.parent.resolve():
        return  # the project's own result is what `current` falls back to anyway
    tmp = link.with_name(f".{LATEST}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(Path(ws).name, tmp)
    os.replace(tmp, link)


def current(home: Path) -> Path:
    """Where the current pipeline result lives: the latest finished run's workspace, else the project itself
    (a `dvc repro` by hand, or no retrain run yet)."""
    link = Path(home) / RUNS / LATEST
    return link.resolve() if (link / ".dvc").is_dir() else Path(home)


def prune(home: Path, keep: int = KEEP_RUNS, current: str | None = None) -> list[Path]:
    """Remove all but the `keep` newest run workspaces (never `current` nor runs/latest); returns what was removed."""
    root = Path(home) / RUNS
    if not root.is_dir():
        return []
    # A run is its folder and its stage tasks' folders (runs/<run>@<stage>): kept or removed together.
    spared = {run_folder(home, current).name if current else None, (root / LATEST).resolve().name}
    folders: dict[str, list[Path]] = {}
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink():
            folders.setdefault(p.name.split(STAGE_SEP)[0], []).append(p)
    runs = sorted((name for name in folders if name not in spared),
                  key=lambda name: max(p.stat().st_mtime for p in folders[name]), reverse=True)
    removed = [p for name in runs[keep:] for p in sorted(folders[name])]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def encoded_lock(ws: Path, stage: str | None = None) -> str:
    """The folder's dvc.lock, base64 on one line; with `stage`, only that stage's entry (what a stage task hands
    on: the next task merges the entries of every stage before it, so no XCom or environment variable grows with
    the number of stages upstream: a whole lock per upstream task overflowed the kernel's 128 KiB limit on one
    environment string for the stack stage)."""
    path = Path(ws) / "dvc.lock"
    if not path.is_file():
        return ""
    raw = path.read_bytes()
    if stage is not None:
        data = yaml.safe_load(raw) or {}
        entry = (data.get("stages") or {}).get(stage)
        if entry is None:
            raise WorkspaceError(f"{path}: no entry for stage {stage} (did `dvc repro -s {stage}` run here?)")
        raw = yaml.safe_dump({"schema": data.get("schema", "2.0"), "stages": {stage: entry}}, sort_keys=False).encode()
    return base64.b64encode(raw).decode()


def spec_from_env() -> dict:
    raw = os.environ.get("RUN_SPEC", "")
    try:
        spec = json.loads(raw)
        return {"run_id": str(spec["run_id"]), "overrides": dict(spec.get("overrides") or {})}
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkspaceError(f"RUN_SPEC must be JSON with run_id and overrides, got {raw[:200]!r}") from exc


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) == 2 else ""
    try:
        if cmd == "materialize":
            spec = spec_from_env()
            home = Path(os.environ.get("DEEPFUSION_HOME", Path.cwd()))
            print(materialize(home, spec["run_id"], spec["overrides"], os.environ.get("RUN_LOCK") or None,
                              os.environ.get("RUN_STAGE") or None))
        elif cmd == "lock":
            print(encoded_lock(Path.cwd(), os.environ.get("RUN_STAGE") or None))
        else:
            raise SystemExit("usage: python -m components.orchestration.run_workspace materialize|lock")
    except (WorkspaceError, ConfigError) as exc:
        raise SystemExit(f"run workspace: {exc}") from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # The task's log must say where and what to do, not end in a traceback of pathlib.
        raise SystemExit(f"run workspace: no space left on this worker's disk ({exc.filename or Path.cwd()}): free "
                         "space there (`dvc gc` in the project, old folders under runs/), then clear the failed task "
                         "(it retries once by itself, possibly on another worker)") from exc


if __name__ == "__main__":
    main()
