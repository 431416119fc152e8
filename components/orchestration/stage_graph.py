"""Which DVC stage needs which: the retrain DAG's shape, read from dvc.yaml when the DAG file is parsed.

A stage depends on another when one of its deps is (or lies inside, or contains) one of the other's outputs, the
rule DVC itself applies (tests/unit/test_stage_graph.py checks the result against DVC's own graph). Stages that do
not depend on each other run as parallel tasks, on any worker: after the audit the TF-IDF, text and metadata
baselines and the image baseline (which the fusion network then needs).

Plain YAML, not the DVC API: the DAG processor parses the DAG file every few seconds, and importing DVC there
costs a second and touches the project's .dvc/. The interpolation needed is what dvc.yaml uses: `${section.key}`
from params.yaml and `${item.<key>}` in a one-key `matrix` (stage names `<stage>@<value>`, as DVC names them).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import yaml

VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")
OUT_KINDS = ("outs", "metrics", "plots")


class StageGraphError(ValueError):
    """dvc.yaml uses something this reader does not resolve (a stage would silently lose an edge)."""


def _lookup(name: str, context: dict, where: str):
    value = context
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise StageGraphError(f"{where}: ${{{name}}} is not defined in params.yaml (or the matrix item)")
        value = value[part]
    return value


def _resolve(text: str, context: dict, where: str) -> str:
    return VAR.sub(lambda m: str(_lookup(m.group(1), context, where)), str(text))


def _paths(entries, context: dict, where: str) -> list[PurePosixPath]:
    """Paths of a deps/outs list, whose items are strings or one-key mappings {path: options}."""
    out = []
    for entry in entries or []:
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        out.append(PurePosixPath(_resolve(path, context, where).rstrip("/")))
    return out


def _expand(name: str, stage: dict, params: dict) -> list[tuple[str, dict, dict]]:
    """(stage name, definition, interpolation context) per generated stage."""
    matrix = stage.get("matrix")
    if not matrix:
        return [(name, stage, params)]
    if len(matrix) != 1:
        raise StageGraphError(f"dvc.yaml stage {name}: a matrix of one key is supported, not {sorted(matrix)}")
    (key, values), = matrix.items()
    return [(f"{name}@{v}", stage, {**params, "item": {key: v}}) for v in values]


def _overlap(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents


def stage_upstream(dvc_yaml: dict, params: dict) -> dict[str, tuple[str, ...]]:
    """Every stage (in dvc.yaml order) -> the stages it directly needs (transitive edges removed), in that order."""
    stages = []
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        for full, definition, context in _expand(name, stage, params):
            where = f"dvc.yaml stage {full}"
            outs = [p for kind in OUT_KINDS for p in _paths(definition.get(kind), context, where)]
            stages.append((full, _paths(definition.get("deps"), context, where), outs))
    needs = {name: [other for other, _, outs in stages if other != name
                    and any(_overlap(d, o) for d in deps for o in outs)]
             for name, deps, _ in stages}
    reach: dict[str, set[str]] = {}

    def ancestors(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        if name in seen:
            raise StageGraphError(f"dvc.yaml: stages {' -> '.join((*seen, name))} form a cycle")
        if name not in reach:
            reach[name] = {a for n in needs[name] for a in (n, *ancestors(n, (*seen, name)))}
        return reach[name]

    for name in needs:  # every stage, so that a cycle is found even where nothing needs reducing
        ancestors(name)
    return {name: tuple(n for n in needs[name]
                        if not any(n in ancestors(m) for m in needs[name] if m != n))
            for name, _, _ in stages}


def read(home: Path) -> dict[str, tuple[str, ...]]:
    """The graph of the project at `home` (its dvc.yaml and params.yaml)."""
    home = Path(home)
    dvc_yaml = yaml.safe_load((home / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((home / "params.yaml").read_text(encoding="utf-8"))
    return stage_upstream(dvc_yaml, params)


def sinks(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """Stages no other stage needs: the run is finished when they are."""
    needed = {n for ups in graph.values() for n in ups}
    return [s for s in graph if s not in needed]


def ancestors(graph: dict[str, tuple[str, ...]], stage: str) -> list[str]:
    """Every stage `stage` needs, directly or not, in the graph's (dvc.yaml) order."""
    seen, todo = set(), list(graph[stage])
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += graph[s]
    return [s for s in graph if s in seen]
