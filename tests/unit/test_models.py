"""Model contracts on random tensors, the losses, one-batch overfit and checkpoint round trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.config import LossWeights
from components.data import Arrays
from components.encoders import Encoders
from components.models.fusion import ModelConfig, build_model
from components.models.losses import contrastive_loss, hierarchy_similarity, semantic_loss, total_loss
from components.models.runtime import predict_arrays, predict_many, prepare_for_inference, trim_padding
from components.training.loop import optimizers

N_CLASSES = (3, 4, 6)
ALL = LossWeights(fused_ce=1.0, modality_ce=0.5, semantic=0.2, gap=0.1, contrastive=0.2)


def cfg(modalities=("image", "text", "metadata"), backbone="mobilenetv3_small_050", wide=True,
        low_res_stem=False, channels=(), text_pretrained="", stem_width=0) -> ModelConfig:
    return ModelConfig(modalities=modalities, backbone=backbone, embed_dim=32, text_dim=16, text_channels=16,
                       text_kernels=(1, 2, 3), meta_dim=8, dropout=0.0, vocab_size=50, subword_buckets=64,
                       attr_vocab_size=20, cardinalities=(3, 5), n_numeric=4, n_classes=N_CLASSES, wide=wide,
                       low_res_stem=low_res_stem, backbone_channels=channels, stem_width=stem_width,
                       text_pretrained=text_pretrained)


def batch(b=8, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 50, (b, 10), generator=g)
    tokens[:, 7:] = 0
    labels = torch.stack([torch.randint(0, n, (b,), generator=g) for n in N_CLASSES], 1)
    subwords = torch.randint(1, 64, (b, 30), generator=g)
    subwords[:, 20:] = 0
    return {"image": torch.randint(0, 256, (b, 80, 64, 3), dtype=torch.uint8, generator=g), "tokens": tokens,
            "subwords": subwords,
            "attrs": torch.randint(0, 20, (b, 5), generator=g), "cat": torch.randint(0, 3, (b, 2), generator=g),
            "num": torch.randn(b, 4, generator=g), "has_image": torch.ones(b, dtype=torch.bool),
            "labels": labels, "group": torch.arange(b)}


@pytest.mark.parametrize("modalities", [("image",), ("text",), ("metadata",), ("image", "text", "metadata")])
def test_contract_shapes_and_unit_norm(modalities):
    model = build_model(cfg(modalities)).eval()
    feats = model.forward_features(batch())
    for m in (*modalities, "fused"):
        assert feats[m].shape == (8, 32)
        assert torch.allclose(feats[m].norm(dim=1), torch.ones(8), atol=1e-4)
    logits = model(batch())["fused"]
    assert [lg.shape for lg in logits] == [(8, n) for n in N_CLASSES]


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "resnet10t"])
def test_image_tower_any_timm_backbone(backbone):
    model = build_model(cfg(("image",), backbone)).eval()
    assert model.forward_features(batch(2))["image"].shape == (2, 32)


def test_missing_image_and_empty_title_are_handled():
    model = build_model(cfg()).eval()
    b = batch()
    b["has_image"][:4] = False
    b["tokens"][4:] = 0
    b["subwords"][4:] = 0
    feats = model.forward_features(b)
    assert not feats["present_image"][:4].any() and not feats["present_text"][4:].any()
    assert torch.isfinite(feats["fused"]).all()
    # Without an image, the fused embedding must not depend on the (garbage) pixels.
    b2 = {k: v.clone() for k, v in b.items()}
    b2["image"][:4] = 0
    assert torch.allclose(model.forward_features(b2)["fused"][:4], feats["fused"][:4], atol=1e-5)


def test_all_losses_are_finite_and_reach_every_tower():
    model = build_model(cfg()).train()
    b = batch()
    loss, parts = total_loss(model, model.forward_features(b), b, ALL, (0.3, 0.5, 1.0))
    assert set(parts) == {"fused_ce", "modality_ce", "semantic", "gap", "contrastive"}
    loss.backward()
    for name in ("towers.image.proj.1.weight", "towers.text.embed.weight", "towers.metadata.mlp.0.weight",
                 "logit_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_wide_head_starts_at_zero_follows_presence_and_learns():
    model = build_model(cfg()).eval()
    b = batch()
    assert torch.count_nonzero(model.forward_features(b)["wide"]) == 0  # zero-initialised linear part
    b["has_image"][:] = True
    total_loss(model.train(), model.forward_features(b), b, ALL, (1.0, 1.0, 1.0))[0].backward()
    assert model.wide.text.weight.grad.abs().sum() > 0 and model.wide.meta.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.wide.text.weight.normal_()
        model.wide.meta.weight.normal_()
    model.eval()
    # Switching text (and with it the title n-grams) off must remove exactly the text part of the wide logits.
    text_off = {**b, "present": torch.tensor([True, False, True]).expand(8, 3)}
    meta_only = model.wide(b["subwords"], b["cat"], b["attrs"])["metadata"]
    assert torch.allclose(model.forward_features(text_off)["wide"], meta_only, atol=1e-5)
    # Each group is an L2-normalised binary bag: one n-gram gives its weight row, four give sum / 2.
    w, ids = model.wide, b["subwords"][:, :4]
    assert torch.allclose(w._normalised_bag(w.text, ids[:, :1], torch.ones(8, 1)), w.text.weight[ids[:, 0]],
                          atol=1e-5)
    assert torch.allclose(w._normalised_bag(w.text, ids, torch.ones(8, 4)), w.text.weight[ids].sum(1) / 2,
                          atol=1e-5)


def test_wide_head_off_and_text_only_model():
    assert build_model(cfg(wide=False)).wide is None
    assert build_model(cfg(("image",))).wide is None
    text_only = build_model(cfg(("text",)))
    assert text_only.wide.meta is None and text_only.wide.text is not None


def test_low_res_stem_keeps_a_larger_final_map():
    model = build_model(cfg(("image",), "resnet10t", low_res_stem=True)).eval()
    plain = build_model(cfg(("image",), "resnet10t")).eval()
    x = model.towers["image"].preprocess(batch(2)["image"])
    assert model.towers["image"].backbone.forward_features(x).shape[-2:] == (5, 4)
    assert plain.towers["image"].backbone.forward_features(x).shape[-2:] == (3, 2)
    with pytest.raises(ValueError, match="low_res_stem"):
        build_model(cfg(("image",), "mobilenetv3_small_050", low_res_stem=True))


def test_backbone_channels_narrow_a_resnet_and_are_refused_elsewhere():
    narrow = build_model(cfg(("image",), "resnet18", channels=(8, 16, 32, 64)))
    assert narrow.towers["image"].backbone.num_features == 64
    assert narrow.forward_features(batch(2))["image"].shape == (2, 32)
    with pytest.raises(ValueError, match="backbone_channels"):
        build_model(cfg(("image",), "mobilenetv3_small_050", channels=(8, 16, 32, 64)))


def test_stem_width_narrows_a_plain_resnet_stem(tmp_path):
    wide = build_model(cfg(("image",), "resnet18", channels=(8, 16, 32, 64)))
    narrow = build_model(cfg(("image",), "resnet18", channels=(8, 16, 32, 64), stem_width=8))
    bb = narrow.towers["image"].backbone
    assert wide.towers["image"].backbone.conv1.out_channels == 64  # timm ignores stem_width on a plain stem
    assert bb.conv1.out_channels == bb.bn1.num_features == bb.feature_info[0]["num_chs"] == 8
    assert bb.layer1[0].conv1.in_channels == 8 and bb.layer1[0].downsample is None  # 8 in, 8 out: identity
    other = build_model(cfg(("image",), "resnet18", channels=(8, 16, 32, 64), stem_width=4)).towers["image"]
    assert other.backbone.layer1[0].downsample[0].in_channels == 4  # a width change keeps its projection
    assert narrow.forward_features(batch(2))["image"].shape == (2, 32)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    # The width is part of the checkpointed config; configs written before it existed mean timm's stem.
    assert ModelConfig.from_dict(narrow.cfg.to_dict()).stem_width == 8
    old = {k: v for k, v in wide.cfg.to_dict().items() if k != "stem_width"}
    assert ModelConfig.from_dict(old) == wide.cfg
    with pytest.raises(ValueError, match="stem_width"):
        build_model(cfg(("image",), "mobilenetv3_small_050", stem_width=8))
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="stem_width"):
        build_model(cfg(("image",), "resnet18", stem_width=8), pretrained_path=str(weights))


def test_loss_terms_by_hand():
    labels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]])
    sim = hierarchy_similarity(labels)
    assert sim[0, 1] == pytest.approx(2 / 3) and sim[0, 2] == pytest.approx(1 / 3) and sim[0, 3] == 0
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert semantic_loss(e, labels) >= 0
    # Perfectly aligned pairs with a sharp temperature give ~0 contrastive loss.
    eye = torch.eye(4, 8)
    assert contrastive_loss(eye, eye, torch.arange(4), torch.tensor(4.6)) < 1e-3
    # Rows 0 and 1 are one product listed twice. With one-hot targets the loss prefers pushing the two
    # listings apart; with the group as positives it prefers them together.
    dup, distinct = eye[[0, 0, 2, 3]], eye
    groups, scale = torch.tensor([0, 0, 1, 2]), torch.tensor(2.0)
    assert contrastive_loss(dup, dup, torch.arange(4), scale) > contrastive_loss(distinct, distinct,
                                                                                  torch.arange(4), scale)
    assert contrastive_loss(dup, dup, groups, scale) < contrastive_loss(distinct, distinct, groups, scale)


def train_steps(model, b: dict[str, torch.Tensor], opts: list[torch.optim.Optimizer], steps: int) -> None:
    """`steps` updates on one batch with every loss term, as the training loop steps its optimizers."""
    for _ in range(steps):
        loss, _ = total_loss(model, model.forward_features(b), b, ALL, (1.0, 1.0, 1.0))
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()


def test_one_batch_overfit():
    torch.manual_seed(0)
    model = build_model(cfg(("text", "metadata"))).train()
    b = batch(16)
    opts = optimizers(model, lr=3e-3, weight_decay=0.0)  # the training loop's AdamW + sparse Adam
    train_steps(model, b, opts, 150)
    model.eval()
    preds = [lg.argmax(1) for lg in model(b)["fused"]]
    for lvl, p in enumerate(preds):
        assert (p == b["labels"][:, lvl]).float().mean() == 1.0


def test_hashed_tables_step_at_their_own_learning_rate():
    """Adam's first step moves each touched weight by about its lr: the n-gram tables by lr x sparse_lr_scale."""
    torch.manual_seed(0)
    model = build_model(cfg(("text",))).train()
    opts = optimizers(model, lr=1e-3, weight_decay=0.0, sparse_lr_scale=10.0)
    assert [type(o).__name__ for o in opts] == ["AdamW", "SparseAdam"]
    table, proj = model.wide.text.weight, model.heads[0].weight
    before_table, before_proj = table.detach().clone(), proj.detach().clone()
    train_steps(model, batch(8), opts, 1)
    assert (table - before_table).abs().max().item() == pytest.approx(1e-2, rel=0.05)
    assert (proj - before_proj).abs().max().item() == pytest.approx(1e-3, rel=0.05)


@pytest.mark.parametrize("keep_last_stage", [False, True])
def test_frozen_image_backbone_keeps_weights_and_batchnorm_while_the_rest_learns(keep_last_stage):
    torch.manual_seed(0)
    model = build_model(cfg(("image", "text"), backbone="resnet10t"))
    tower = model.towers["image"]
    tower.freeze_backbone(keep_last_stage)
    model.train()
    assert not tower.backbone.bn1.training and tower.proj.training  # BN statistics stay as trained
    assert tower.backbone.layer4[0].bn1.training == keep_last_stage
    before = {k: v.clone() for k, v in tower.backbone.state_dict().items()}
    proj_before = tower.proj[1].weight.clone()
    opts = optimizers(model, lr=1e-2, weight_decay=0.1)
    frozen = {id(p) for n, p in tower.backbone.named_parameters() if not (keep_last_stage and n.startswith("layer4."))}
    assert not any(id(p) in frozen for o in opts for g in o.param_groups for p in g["params"])
    b = batch(8)
    train_steps(model, b, opts, 3)
    after = tower.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("layer4."))
    assert not torch.equal(proj_before, tower.proj[1].weight)
    moved = not all(torch.equal(before[f"layer4.{k}"], v) for k, v in tower.backbone.layer4.state_dict().items())
    assert moved == keep_last_stage


SMALL_RESNET = {"backbone": "resnet18", "channels": (8, 16, 32, 64), "stem_width": 8}


def as_arrays(b: dict[str, torch.Tensor]) -> Arrays:
    return Arrays(**{k: b[k].numpy() for k in ("tokens", "subwords", "attrs", "cat", "num", "has_image", "labels",
                                               "group")}, images=b["image"].numpy())


def test_folded_batchnorm_predicts_as_before_and_refuses_to_train():
    torch.manual_seed(0)
    model = build_model(cfg(("image",), **SMALL_RESNET)).train()
    for seed in range(3):  # BatchNorm statistics away from their initial 0/1
        model.forward_features(batch(8, seed))
    model.eval()
    b = batch(8, 5)
    before = model.forward_features(b)["image"]
    prepare_for_inference(model)
    backbone = model.towers["image"].backbone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert torch.allclose(model.forward_features(b)["image"], before, atol=1e-5)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()
    other = prepare_for_inference(build_model(cfg(("image",))))  # MobileNet: no known split, left as it is
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in other.towers["image"].modules())


def test_models_sharing_a_frozen_trunk_compute_it_once_and_predict_as_alone():
    torch.manual_seed(0)
    image = build_model(cfg(("image",), **SMALL_RESNET))
    fusion = build_model(cfg(("image", "text", "metadata"), **SMALL_RESNET))
    other = build_model(cfg(("image",), **SMALL_RESNET))
    # as train_fusion's warm start leaves it: every stage but the last one is the image baseline's
    trunk = {k: v for k, v in image.towers["image"].backbone.state_dict().items() if not k.startswith("layer4.")}
    fusion.towers["image"].backbone.load_state_dict(trunk, strict=False)
    models = {"image": image, "fusion": fusion, "other": other}
    for m in models.values():
        prepare_for_inference(m)
    a, cpu = as_arrays(batch(10, 1)), torch.device("cpu")
    calls = []
    hooks = [m.towers["image"].backbone.conv1.register_forward_hook(lambda *_: calls.append(1))
             for m in models.values()]
    together = predict_many(models, a, 4, cpu, embeddings=("fusion",))
    assert len(calls) == 3 + 3  # 3 batches: the shared trunk once, `other`'s own once
    for h in hooks:
        h.remove()
    assert image.towers["image"].trunk_key() == fusion.towers["image"].trunk_key() != other.towers["image"].trunk_key()
    alone = {name: predict_arrays(m, a, 4, cpu, embeddings=name == "fusion") for name, m in models.items()}
    for name in models:
        for p, q in zip(alone[name]["probs"], together[name]["probs"]):
            np.testing.assert_allclose(p, q, atol=1e-6)
    np.testing.assert_allclose(alone["fusion"]["embeddings"]["image"], together["fusion"]["embeddings"]["image"],
                               atol=1e-6)


def test_padding_columns_are_trimmed_at_inference_without_changing_any_output():
    b = batch(6, 2)
    b["tokens"][:, 4:] = 0
    b["tokens"][0, 3] = 0  # a shorter title than the batch's longest one keeps its padding inside the width
    b["subwords"][:, 12:] = 0
    b["attrs"][:, 3:] = 0
    cut = trim_padding(b)
    assert [cut[k].shape[1] for k in ("tokens", "subwords", "attrs")] == [4, 12, 3]
    assert all(cut[k] is b[k] for k in ("image", "cat", "num", "labels"))
    empty = trim_padding({"tokens": torch.zeros(3, 24, dtype=torch.long)})
    assert empty["tokens"].shape == (3, 1)  # an all-padding batch (no titles) keeps one padding column
    torch.manual_seed(0)
    for modalities in [("text",), ("metadata",), ("image", "text", "metadata")]:
        model = prepare_for_inference(build_model(cfg(modalities, **SMALL_RESNET)))
        with torch.no_grad():  # the wide head's weights start at zero: give them values the padding would meet
            for p in model.parameters():
                if not p.any():
                    p.normal_()
            full, trimmed = model(b), model(trim_padding(b))
        for lvl in range(3):
            torch.testing.assert_close(trimmed["fused"][lvl], full["fused"][lvl], rtol=1e-6, atol=1e-6)
    # and predict_many (which trims) gives what the untrimmed model gives, batch by batch
    a = as_arrays(b)
    # fp32 forced: "auto" is bf16 autocast on a CPU with AVX-512 BF16, and the reference below is fp32.
    probs = predict_arrays(model, a, 4, torch.device("cpu"), cpu_precision="fp32")["probs"]
    with torch.no_grad():
        ref = [torch.softmax(lg, 1).numpy() for lg in model.fused_logits(model.forward_features(b))]
    for p, q in zip(probs, ref):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def encoders() -> Encoders:
    return Encoders(10, 5, False, 64, 30, (2, 5), {"a": 2}, {"fit=slim": 2},
                    {"gender": {"Men": 1}, "usage": {"Casual": 1}},
                    {"price": (6.0, 1.0), "year": (2014.0, 2.0)},
                    {"masterCategory": ["A", "B", "C"], "subCategory": list("abcd"),
                     "articleType": list("uvwxyz")}, [("A", "a", "u")], "")


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = build_model(cfg()).eval()
    save_checkpoint(tmp_path / "m.pt", model, encoders(), {"image_size": [80, 64]})
    loaded, enc, meta = load_checkpoint(tmp_path / "m.pt")
    b = batch()
    with torch.no_grad():
        a, c = model.forward_features(b)["fused"], loaded.forward_features(b)["fused"]
    assert torch.allclose(a, c) and enc.labels["articleType"] == list("uvwxyz") and meta["image_size"] == [80, 64]


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a deepfusion-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # Pickled objects are refused, not executed: a checkpoint holds tensors and plain values only.
    torch.save({"weights": np.zeros(2)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled.pt: .*objects other than tensors"):
        load_checkpoint(tmp_path / "pickled.pt")
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "weights": torch.zeros(1000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable DeepFusion checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_pretrained_path_must_exist():
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        build_model(cfg(("image",)), pretrained_path="/nonexistent/weights.safetensors")


def test_local_pretrained_weights_are_loaded(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("mobilenetv3_small_050", num_classes=0)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    model = build_model(cfg(("image",)), pretrained_path=str(tmp_path / "w.safetensors"))
    k = "conv_stem.weight"
    assert torch.equal(model.towers["image"].backbone.state_dict()[k], ref.state_dict()[k])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_forward_backward():
    from components.models.runtime import autocast

    model = build_model(cfg()).cuda().train()
    b = {k: v.cuda() for k, v in batch().items()}
    with autocast(torch.device("cuda")):
        loss, _ = total_loss(model, model.forward_features(b), b, ALL, (1.0, 1.0, 1.0))
    loss.backward()
    assert torch.isfinite(loss)
