"""Take the code's dep hashes and the params values into dvc.lock, leaving every output entry as it is.

    .venv/bin/python scripts/relock_code.py      # from the project root; prints what it changed

For a refactoring that scripts/slice_repro.py proved byte-identical (same outputs before and after) when the
full outputs are not on this machine for `dvc commit`: each stage's `components/...` deps are hashed by DVC
itself (`dep.save()`, so directories get DVC's .dir hashes) and its params entries are read from params.yaml.
Run `dvc status` afterwards: no code or params dep may show as changed.

    .venv/bin/python scripts/relock_code.py --data   # also every data dep present here (e.g. fresh ingest outputs)

`--data` is for a change that adds to a stage's outputs without changing what the stages after it make (proved
the same way on the slice): after `dvc repro <that stage>` on the full data, the later stages' entries take the
new hashes of the files they read. Deps that are not on this machine keep their locked hashes.
"""
from __future__ import annotations

import copy

import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
from dvc.utils.serialize import dump_yaml, load_yaml


def main(argv: list[str] | None = None) -> int:
    import sys

    data = "--data" in (sys.argv[1:] if argv is None else argv)
    repo = Repo(".")
    lock = load_yaml("dvc.lock")
    params = yaml.safe_load(open("params.yaml", encoding="utf-8"))
    for stage in repo.index.stages:
        entry = lock["stages"].get(stage.addressing)
        if entry is None:
            continue
        by_path = {d["path"]: d for d in entry.get("deps", [])}
        wanted: dict = {}
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                for key in sorted(dep.params):
                    value = params
                    for part in key.split("."):
                        value = value[part]
                    wanted[key] = copy.deepcopy(value)  # no YAML anchors between stages
                continue
            path = str(dep.def_path)
            if not path.startswith("components") and not (data and dep.exists):
                continue  # data and stage outputs: their hashes are the pipeline's, never recomputed here
            dep.save()
            new = {"path": path, "hash": "md5", "md5": dep.hash_info.value, "size": dep.meta.size}
            if dep.meta.isdir:
                new["nfiles"] = dep.meta.nfiles
            if by_path.get(path) != new:
                print(stage.addressing, path)
                if path in by_path:
                    by_path[path].clear()
                    by_path[path].update(new)
                else:
                    entry.setdefault("deps", []).append(new)
        if wanted and dict(entry.get("params", {}).get("params.yaml", {})) != wanted:
            print(stage.addressing, "params")
            entry.setdefault("params", {})["params.yaml"] = wanted
    dump_yaml("dvc.lock", lock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
