"""Which data, code and outputs a published result came from (tags on MLflow runs and model versions)."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml

RUN_FILE = "run.json"  # in a retrain run's workspace: its overrides and catalog version


def data_md5(dvc_file: str | Path = "data.dvc") -> str:
    """The DVC md5 of the catalog version (in a run workspace: the one it was made from); '' outside a project."""
    p = Path(dvc_file)
    if not p.is_file():
        run = p.with_name(RUN_FILE)
        return str(json.loads(run.read_text()).get("data_md5", "")) if run.is_file() else ""
    outs = yaml.safe_load(p.read_text()).get("outs", [{}])
    return str(outs[0].get("md5", ""))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_overrides(run_file: str | Path = RUN_FILE) -> dict:
    """The params a retrain run changed over the tracked params.yaml (its run workspace's run.json); {} else."""
    p = Path(run_file)
    return dict(json.loads(p.read_text()).get("overrides") or {}) if p.is_file() else {}


def run_overrides_tag() -> str:
    """run_overrides as the tag on MLflow runs and model versions ("{}" for none)."""
    return json.dumps(run_overrides(), sort_keys=True)


def files_md5(*paths: str | Path) -> str:
    """One md5 over the bytes of these files (folders: every file inside, in path order)."""
    h = hashlib.md5()
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
