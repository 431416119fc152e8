"""The expert registry is the one list of experts: dvc.yaml, the retrain DAG and params agree with it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from components import experts
from components.config import load_raw

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_trains_every_expert_in_the_registry_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train_baseline"]["matrix"]["model"] == [e.name for e in experts.BASELINES]
    expanded = [f"{name}@{m}" if "matrix" in st else name for name, st in stages.items()
                for m in (st["matrix"]["model"] if "matrix" in st else [None])]
    assert [s for s in expanded if s in {e.stage for e in experts.EXPERTS}] == [e.stage for e in experts.EXPERTS]


def test_the_retrain_dag_runs_every_expert_stage_and_routes_image_towers_to_gpu():
    from components.orchestration import stage_graph

    source = (ROOT / "dags" / "retrain.py").read_text()
    assert "stage_graph.read(home())" in source  # the DAG's stages come from dvc.yaml, not written out again
    assert {e.stage for e in experts.EXPERTS} <= set(stage_graph.read(ROOT))
    gpu = {e.stage for e in experts.EXPERTS if "image" in e.reads and not e.linear}
    assert gpu == {"train_baseline@image", "train_fusion"}


def test_params_pool_every_registered_expert_by_default():
    assert tuple(load_raw(ROOT / "params.yaml")["stack"]["experts"]) == experts.NAMES
    assert experts.REQUIRED == ("fusion",)


def test_an_expert_votes_where_any_input_it_reads_is_present():
    present = {"image": np.array([1, 0, 0, 0], bool), "text": np.array([0, 1, 0, 0], bool),
               "metadata": np.array([0, 0, 1, 0], bool)}
    assert experts.applies("tfidf", present, 4).tolist() == [False, True, True, False]
    assert experts.applies("image", present, 4).tolist() == [True, False, False, False]
    assert experts.applies("fusion", present, 4).tolist() == [True] * 4  # required: votes even on nothing


def test_files_follow_the_stage_folders(tmp_path):
    from components.config import Paths

    names = {f: str(tmp_path / f) for f in Paths.__dataclass_fields__}
    paths = Paths(**names)
    files = experts.files(paths)
    assert files["tfidf"].name == "model.npz" and files["image"] == tmp_path / "train_baseline/image/model.pt"
    assert files["fusion"] == tmp_path / "train_fusion/model/model.pt"
    assert experts.BY_NAME["text"].stage_files(paths)[0] == tmp_path / "train_baseline/metrics_text.json"
