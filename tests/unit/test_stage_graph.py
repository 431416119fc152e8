"""The retrain DAG's shape comes from dvc.yaml: the same edges as DVC's own graph, transitive ones removed."""
from __future__ import annotations

import networkx as nx
import pytest
from dvc.repo import Repo

from components.orchestration import stage_graph
from tests.conftest import ROOT


def test_the_project_graph_is_dvcs_graph_reduced():
    graph = stage_graph.read(ROOT)
    with Repo(str(ROOT)) as repo:  # DVC's own graph: an edge from a stage to each stage it needs
        dvc = nx.DiGraph((a.addressing, b.addressing) for a, b in repo.index.graph.edges)
        dvc.add_nodes_from(s.addressing for s in repo.index.stages)
    dvc.remove_node("data.dvc")  # the catalog's .dvc file: an input, not a stage of dvc.yaml
    assert set(graph) == set(dvc.nodes)
    reduced = nx.transitive_reduction(dvc)
    assert {(s, u) for s, ups in graph.items() for u in ups} == set(reduced.edges)
    # What runs in parallel after the audit: the four baselines, then fusion once the image baseline is there.
    assert graph["train_fusion"] == ("train_baseline@image",)
    assert all(graph[f"train_baseline@{m}"] == ("audit",) for m in ("tfidf", "image", "text", "metadata"))
    assert stage_graph.sinks(graph) == ["evaluate"]
    assert stage_graph.ancestors(graph, "train_fusion") == ["ingest", "validate", "features", "audit",
                                                            "train_baseline@image"]
    assert set(stage_graph.ancestors(graph, "evaluate")) == set(graph) - {"evaluate"}


def test_matrix_interpolation_nested_paths_and_reduction():
    dvc_yaml = {"stages": {
        "a": {"cmd": "x", "deps": ["raw"], "outs": ["${paths.a}/table.parquet", {"${paths.a}/img.npy": {
            "cache": True}}]},
        "b": {"cmd": "x", "matrix": {"m": ["one", "two"]}, "deps": ["${paths.a}/table.parquet"],
              "outs": ["${paths.b}/${item.m}"]},
        "c": {"cmd": "x", "deps": ["${paths.b}", "${paths.a}"], "metrics": ["${paths.c}/m.json"]},
        "d": {"cmd": "x", "deps": ["${paths.c}/m.json", "${paths.b}/two/model.pt"]},
    }}
    params = {"paths": {"a": "art/a", "b": "art/b", "c": "art/c"}}
    graph = stage_graph.stage_upstream(dvc_yaml, params)
    assert graph == {"a": (), "b@one": ("a",), "b@two": ("a",), "c": ("b@one", "b@two"),
                     "d": ("c",)}  # d -> b@two is implied by c
    assert stage_graph.sinks(graph) == ["d"]


def test_what_it_cannot_resolve_is_an_error_not_a_lost_edge():
    with pytest.raises(stage_graph.StageGraphError, match=r"stage b: \$\{paths.nope\}"):
        stage_graph.stage_upstream({"stages": {"b": {"cmd": "x", "deps": ["${paths.nope}"]}}}, {"paths": {}})
    with pytest.raises(stage_graph.StageGraphError, match="cycle"):
        stage_graph.stage_upstream({"stages": {"a": {"cmd": "x", "deps": ["y"], "outs": ["x"]},
                                               "b": {"cmd": "x", "deps": ["x"], "outs": ["y"]}}}, {})
    with pytest.raises(stage_graph.StageGraphError, match="one key"):
        stage_graph.stage_upstream({"stages": {"a": {"cmd": "x", "matrix": {"p": [1], "q": [2]}}}}, {})
