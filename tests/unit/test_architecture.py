"""The import graph of `components/`: imports point one way, and dvc.yaml lists every module a stage runs.

A stage whose deps miss a module it imports is served stale from the DVC cache after that module changes,
so the deps are checked against the imports (transitively, function-level imports included).
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "components"

# Lower layers never import higher ones; within a layer imports are free unless FORBIDDEN says otherwise.
LAYERS = [
    ("core", ["config", "catalog", "images", "metrics", "atomic_io", "data", "report", "label_noise", "experts",
              "web_assets"]),
    ("models", ["models"]),
    ("encoders", ["encoders"]),
    ("bundles", ["checkpoint", "mlflow_store"]),
    ("training+serving", ["training", "serving"]),
    ("pipeline", ["pipeline"]),
    ("lifecycle", ["lifecycle"]),
    ("monitoring", ["monitoring"]),
    ("review", ["review"]),
    ("orchestration", ["orchestration"]),
    ("commands", ["predict", "search", "registry", "drift", "replay", "suspects", "results", "catalog_inspect", "cli"]),
]
FORBIDDEN = [("serving", "training")]  # serving runs a trained model; it never needs the training loop


def module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for p in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if p.is_file():
            return p
    return None


@cache
def direct_imports(name: str) -> frozenset[str]:
    """components.* modules that `name` imports anywhere in its file (function bodies included)."""
    tree = ast.parse(module_file(name).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            # `from components.monitoring import drift` imports a module, not a name
            out |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return frozenset(m for m in out if m.startswith("components") and module_file(m))


def transitive(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += direct_imports(m)
    return seen


def all_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in PKG.rglob("*.py"))


def layer(name: str) -> tuple[int, str]:
    head = name.split(".")[1] if "." in name else ""
    for i, (_, members) in enumerate(LAYERS):
        if head in members:
            return i, head
    return -1, head  # the package roots: docstring-only __init__ files


def test_every_module_has_a_layer():
    assert [m for m in all_modules() if "." in m and not m.endswith("__init__") and layer(m)[0] < 0] == []


def test_imports_point_one_way():
    upward = []
    for m in all_modules():
        lm, hm = layer(m)
        for dep in direct_imports(m):
            ld, hd = layer(dep)
            if ld > lm or (hm, hd) in FORBIDDEN:
                upward.append(f"{m} ({LAYERS[lm][0]}) -> {dep} ({LAYERS[ld][0]})")
    assert upward == []


def stage_modules() -> dict[str, tuple[str, list[str]]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        module = st["cmd"].split("python -m ")[1].split()[0]
        out[name] = (module, [d for d in st["deps"] if isinstance(d, str) and d.startswith("components")])
    return out


def code_files(module: str) -> set[str]:
    files = set()
    for m in transitive(module):
        f = module_file(m)
        body = ast.parse(f.read_text()).body
        if f.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body):
            continue  # a docstring-only package marker computes nothing
        files.add(str(f.relative_to(ROOT)))
    return files


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_dvc_deps_cover_the_stage_imports(stage):
    module, deps = stage_modules()[stage]
    missing = sorted(f for f in code_files(module)
                     if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert missing == [], f"dvc.yaml stage {stage}: add these code deps: {missing}"


def test_the_stage_modules_are_in_components_pipeline():
    # one stage = one module = one params section = one output folder
    for stage, (module, _) in stage_modules().items():
        assert module == f"components.pipeline.{stage.split('@')[0]}", stage


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as the path it closes (a -> b -> a)."""
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join([*path[path.index(d):], m, d] if d in path else [m, d]))
            elif d not in state:
                visit(d, [*path, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_the_cycle_finder_finds_one():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    """No module reaches itself through its imports (function-level ones included): a cycle hides an order of
    initialisation, and usually two modules that are one or a function that belongs elsewhere."""
    assert find_cycles({m: set(direct_imports(m)) - {m} for m in all_modules()}) == []
