from __future__ import annotations

import pytest

from components.config import ConfigError, deep_merge, load_params, load_raw, params_from_dict
from tests.conftest import ROOT


def test_repo_params_load():
    p = params_from_dict(load_raw(ROOT / "params.yaml"))
    assert p.catalog.levels == ("masterCategory", "subCategory", "articleType") and p.catalog.id_type == "int"
    assert p.model.pretrained_path == "" and p.model.backbone  # ModelParams = ModelArch + the weights file


def test_model_config_takes_the_architecture_from_params():
    from components.models.fusion import ModelConfig

    p = params_from_dict(load_raw(ROOT / "params.yaml"))
    sizes = {"vocab_size": 10, "subword_buckets": 64, "attr_vocab_size": 5, "cardinalities": (3, 4),
             "n_numeric": 2, "n_classes": (2, 3, 4), "text_pretrained": ""}
    cfg = ModelConfig.from_params(p.model, ("text",), **sizes)
    assert cfg.embed_dim == p.model.embed_dim and cfg.backbone_channels == p.model.backbone_channels
    assert not hasattr(cfg, "pretrained_path")  # where the weights came from is not the network's shape
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_gpu_profile_is_a_valid_override():
    raw = deep_merge(load_raw(ROOT / "params.yaml"), load_raw(ROOT / "params.gpu.yaml"))
    p = params_from_dict(raw)
    assert p.train_fusion.train.device in ("auto", "cuda")


@pytest.mark.parametrize("override, message", [
    ({"ingest": {"bogus": 1}}, "unknown key"),
    ({"train_fusion": {"train": {"lr": "3e-4"}}}, "expected a number"),
    ({"ingest": {"workers": 2.5}}, "expected an integer"),
    ({"train_retrieval": {"metadata_heads": ["colour"]}}, r"train_retrieval.metadata_heads: \['colour'\] are not in "),
])
def test_bad_params_raise_naming_the_key(override, message):
    raw = deep_merge(load_raw(ROOT / "params.yaml"), override)
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw)


def test_missing_key_raises():
    raw = load_raw(ROOT / "params.yaml")
    del raw["ingest"]["limit"]
    with pytest.raises(ConfigError, match="missing key 'limit'"):
        params_from_dict(raw)


def test_a_workspace_s_params_resolve_paths_against_it_wherever_the_caller_is(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    p = load_params(ws)
    assert p.paths.stack == str(ws.resolve() / "artifacts" / "stack") and p.paths.drift_cache.startswith(str(ws))
    assert load_params(ws / "params.yaml") == p
    monkeypatch.chdir(ws)
    assert load_params().paths.stack == "artifacts/stack"  # a DVC stage: relative, as written
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nowhere")
