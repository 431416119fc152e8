from __future__ import annotations

import pytest

from components.config import ConfigError, deep_merge, load_raw, params_from_dict
from tests.conftest import ROOT


def test_repo_params_load():
    p = params_from_dict(load_raw(ROOT / "params.yaml"))
    assert p.levels == ("masterCategory", "subCategory", "articleType")
    assert "masterCategory" in p.features.forbidden


def test_gpu_profile_is_a_valid_override():
    raw = deep_merge(load_raw(ROOT / "params.yaml"), load_raw(ROOT / "params.gpu.yaml"))
    p = params_from_dict(raw)
    assert p.train_fusion.train.device in ("auto", "cuda")


@pytest.mark.parametrize("override, message", [
    ({"ingest": {"bogus": 1}}, "unknown key"),
    ({"train_fusion": {"train": {"lr": "3e-4"}}}, "expected a number"),
    ({"ingest": {"workers": 2.5}}, "expected an integer"),
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
