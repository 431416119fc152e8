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


def recipe_md5(of: list[str | Path], lock: str | Path = "dvc.lock") -> str:
    """What the pipeline result holding the files `of` was made from, and nothing it made: per stage of `lock`,
    its command, its params and the md5 of every dep no stage produces (the catalog, the corrections, the code).
    Two runs of one recipe make the same model up to the float summation order of their CPUs (docs: the
    experiments log's determinism entry): the registry keeps one version for them. '' unless every file of `of`
    is an output of `lock` with the bytes it recorded (a model copied or edited outside the pipeline has no
    recipe), or when there is no lock."""
    p = Path(lock)
    if not p.is_file():
        return ""
    stages = (yaml.safe_load(p.read_text()) or {}).get("stages") or {}
    base = p.resolve().parent
    outs = {(base / o["path"]).resolve(): o.get("md5", "") for st in stages.values() for o in st.get("outs", [])}

    def recorded(f: Path) -> bool:
        f = (base / f).resolve()
        if f in outs:
            return f.is_file() and outs[f] == hashlib.md5(f.read_bytes()).hexdigest()
        return any(o in f.parents for o in outs)  # inside an output folder (its .dir hash covers it)

    if not of or not all(recorded(Path(f)) for f in of):
        return ""

    def produced(dep: str) -> bool:
        d = (base / dep).resolve()
        return any(d == o or o in d.parents or d in o.parents for o in outs)

    recipe = {name: {"cmd": st.get("cmd"), "params": st.get("params", {}),
                     "deps": {d["path"]: d.get("md5") for d in st.get("deps", []) if not produced(d["path"])}}
              for name, st in stages.items()}
    return hashlib.md5(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def locked_outputs(paths: list[str | Path], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """{path: md5} of these pipeline outputs as `lock` recorded them (files only; a path it lacks is left out):
    what a worker that shares no disk with the run pulls from the DVC remote `artifacts` to get them."""
    p = Path(lock)
    if not p.is_file():
        return {}
    stages = (yaml.safe_load(p.read_text()) or {}).get("stages") or {}
    recorded = {str(Path(o["path"])): o.get("md5", "") for st in stages.values() for o in st.get("outs", [])}
    return {str(path): recorded[str(Path(path))] for path in paths
            if recorded.get(str(Path(path)), "") and not recorded[str(Path(path))].endswith(".dir")}
