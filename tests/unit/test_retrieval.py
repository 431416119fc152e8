"""Retrieval towers: the fusion towers at the start, the InfoNCE with memory, same-class batches, training that
pairs each listing's photo with its title while the trunk and the fusion network stay as they were, the photo's
colours and augmented views, metadata heads that teach both vectors a column, the self-describing file (and the
colourless format before it) and the fingerprint of the fusion network it fits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.config import TrainRetrievalParams
from components.data import Arrays
from components.metrics import relevance
from components.models.fusion import ModelConfig, build_model
from components.models.retrieval import (
    Memory,
    MetadataHeads,
    RetrievalError,
    RetrievalTowers,
    class_block_order,
    colour_histogram,
    info_nce,
    load_towers,
    save_towers,
    space_fingerprint,
)
from components.models.runtime import predict_arrays
from components.pipeline.train_retrieval import drop_ids, metadata_columns, train_towers, trunks, view


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tiny_fusion():
    cfg = ModelConfig(backbone="resnet18", embed_dim=16, text_dim=8, text_channels=8, text_kernels=(1, 2), meta_dim=4,
                      dropout=0.0, wide=False, low_res_stem=False, backbone_channels=(8, 8, 16, 16), stem_width=0,
                      modalities=("image", "text", "metadata"), vocab_size=60, subword_buckets=64,
                      attr_vocab_size=10, cardinalities=(4, 5), n_numeric=2, n_classes=(2, 3, 4), text_pretrained="")
    torch.manual_seed(0)
    return build_model(cfg).eval()


CATEGORICAL = ("gender", "colour")  # what the tiny network's two metadata ids name (cardinalities 4 and 5)


def listings(n: int, seed: int = 0) -> Arrays:
    """n listings, each its own photo (a random colour field) and its own title words; their "colour" id (1-3)
    is the photo's strongest channel, which the titles never say."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (n, 1, 1, 3))
    images = np.clip(colours + rng.integers(-10, 10, (n, 80, 64, 3)), 0, 255).astype(np.uint8)
    cat = np.stack([rng.integers(0, 4, n), colours.reshape(n, 3).argmax(1) + 1], axis=1)
    return Arrays(tokens=rng.integers(1, 60, (n, 5)), subwords=rng.integers(1, 64, (n, 10)),
                  attrs=rng.integers(0, 10, (n, 4)), cat=cat,
                  num=rng.normal(size=(n, 2)).astype(np.float32), images=images, has_image=np.ones(n, bool),
                  labels=np.tile(rng.integers(0, 4, (n, 1)), (1, 3)), group=np.arange(n))


def test_towers_start_as_the_fusion_networks_own_space():
    fusion, a = tiny_fusion(), listings(12)
    towers = RetrievalTowers(fusion, space_fingerprint(fusion)).eval()
    cpu = torch.device("cpu")
    own = predict_arrays(fusion, a, 8, cpu, embeddings=True, cpu_precision="fp32")["embeddings"]
    seen = predict_arrays(towers.with_towers_of(fusion), a, 8, cpu, embeddings=True, cpu_precision="fp32")
    for m in ("image", "text"):
        np.testing.assert_allclose(seen["embeddings"][m], own[m], atol=1e-5)
    assert fusion.towers["image"] is not towers.towers["image"]  # copies: the fusion network keeps its own


def train_on_listings(**recipe):
    """A tiny fusion network, its weights before, and towers trained on 64 listings (each its own product) with
    the given recipe (TrainRetrievalParams fields beside the fixed ones)."""
    fusion, a = tiny_fusion(), listings(64)
    before = {k: v.clone() for k, v in fusion.state_dict().items()}
    recipe = {"metadata_heads": (), "metadata_weight": 0.0, **recipe}
    p = TrainRetrievalParams(batch_size=32, lr=3e-3, weight_decay=0.0, class_block=1, device="cpu", **recipe)
    towers, result = train_towers(fusion, a, a, relevance(np.arange(64).astype(str), np.full(64, "")), p, 0,
                                  torch.device("cpu"), CATEGORICAL)
    return fusion, a, before, towers, result


def test_training_pairs_listings_and_leaves_the_trunk_and_the_fusion_network_alone():
    fusion, a, before, towers, result = train_on_listings(epochs=25, patience=25, memory=64, views=3, colour=True,
                                                          stages=1, token_dropout=0.1)
    start, kept = result["val"]["fusion_space"], result["val"]["retrieval"]
    assert kept["score"] >= max(h["score"] for h in result["history"])  # the best epoch is the one kept
    assert kept["score"] > start["score"] + 0.2, (start, kept)
    for k, v in fusion.state_dict().items():
        assert torch.equal(v, before[k]), k  # categorizing cannot change
    mine = towers.state_dict()
    assert torch.equal(mine["towers.image.tower.backbone.layer1.0.conv1.weight"],
                       before["towers.image.backbone.layer1.0.conv1.weight"])  # the trunk is the fusion network's
    assert not torch.equal(mine["towers.image.tower.backbone.layer4.0.conv1.weight"],
                           before["towers.image.backbone.layer4.0.conv1.weight"])
    assert mine["towers.image.colour.2.weight"].abs().sum() > 0  # the colour branch learnt from zero
    assert towers.fingerprint == space_fingerprint(fusion)


def named_by_centroids(vectors: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose nearest value centroid (of their own vectors) is their value: how plainly the vectors
    lay a column out."""
    values = np.unique(y)
    centroids = np.stack([vectors[y == v].mean(0) for v in values])
    return float((values[(vectors @ centroids.T).argmax(1)] == y).mean())


def test_metadata_heads_teach_both_vectors_a_metadata_column_and_stay_out_of_the_towers():
    # The listings' colour id is in their photos, never in their titles, and InfoNCE does not need it to pair
    # them: the heads' loss lays it out in both vectors. The heads are training scaffolding: not in the towers.
    assert metadata_columns(CATEGORICAL, ("colour",)) == [1]
    with pytest.raises(ValueError, match=r"metadata_heads: \['brand'\]"):
        metadata_columns(CATEGORICAL, ("brand",))
    heads = MetadataHeads(16, {"colour": 5})
    v = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert heads(v, v, torch.zeros(8, 1, dtype=torch.long)) == 0  # every value unknown (0): nothing to learn
    a, cpu = listings(64), torch.device("cpu")
    y = a.cat[:, 1]
    named = {}
    for weight in (0.0, 3.0):
        _, _, _, towers, _ = train_on_listings(epochs=25, patience=25, memory=0, views=1, colour=False, stages=1,
                                               token_dropout=0.0, metadata_heads=("colour",), metadata_weight=weight)
        assert not any("head" in k for k in towers.state_dict())
        got = predict_arrays(towers.with_towers_of(tiny_fusion()), a, 8, cpu, embeddings=True, cpu_precision="fp32")
        named[weight] = [named_by_centroids(got["embeddings"][m], y) for m in ("image", "text")]
    (image_off, text_off), (image_on, text_on) = named[0.0], named[3.0]
    assert image_on > image_off + 0.1 and text_on > text_off + 0.05, named


def test_towers_file_round_trip_and_refusals(tmp_path):
    fusion, a = tiny_fusion(), listings(6)
    towers = RetrievalTowers(fusion, "abc")
    with torch.no_grad():
        towers.towers["text"].proj[-1].weight.normal_()
    path = tmp_path / "towers.pt"
    save_towers(towers, path, {"best_epoch": 3})
    back = load_towers(path)  # BatchNorm folded: the same vectors up to rounding
    cpu = torch.device("cpu")
    want = predict_arrays(towers.eval().with_towers_of(fusion), a, 8, cpu, embeddings=True, cpu_precision="fp32")
    got = predict_arrays(back.with_towers_of(fusion), a, 8, cpu, embeddings=True, cpu_precision="fp32")
    for m in ("image", "text"):
        np.testing.assert_allclose(got["embeddings"][m], want["embeddings"][m], atol=1e-4)
    assert back.fingerprint == "abc"
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(RetrievalError, match="junk.pt"):
        load_towers(tmp_path / "junk.pt")
    # A file of the format before the colour branch still loads, as the towers it was.
    plain = RetrievalTowers(fusion, "abc", colour=False)
    save_towers(plain, tmp_path / "v1.pt", {})
    assert torch.load(tmp_path / "v1.pt", weights_only=True)["format"] == "deepfusion-retrieval-towers/1"
    old = load_towers(tmp_path / "v1.pt")
    assert old.plain and not any(".colour." in k for k in old.state_dict())
    was = predict_arrays(plain.eval().with_towers_of(fusion), a, 8, cpu, embeddings=True, cpu_precision="fp32")
    now = predict_arrays(old.with_towers_of(fusion), a, 8, cpu, embeddings=True, cpu_precision="fp32")
    np.testing.assert_allclose(now["embeddings"]["image"], was["embeddings"]["image"], atol=1e-4)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(RetrievalError, match="other.pt.*train_retrieval"):
        load_towers(tmp_path / "other.pt")


def test_info_nce_prefers_aligned_pairs_and_ignores_remembered_copies_of_the_batch(rng):
    x = torch.from_numpy(unit(rng.normal(size=(8, 16))))
    other = torch.from_numpy(unit(rng.normal(size=(8, 16))))
    group = torch.arange(8)
    scale = torch.tensor(np.log(10.0), dtype=torch.float32)
    assert info_nce(x, x, group, scale) < info_nce(x, other, group, scale)
    # A remembered row of the query's own group is neither positive nor negative (it may be this very listing,
    # a few steps old); a remembered row of another group is one more negative.
    one, g0 = x[:1], group[:1]
    same, other_group = Memory(4, 16), Memory(4, 16)
    same.push(one, one, g0)
    other_group.push(one, one, g0 + 100)
    assert float(info_nce(one, one, g0, scale, same)) == pytest.approx(float(info_nce(one, one, g0, scale)), abs=1e-6)
    assert float(info_nce(one, one, g0, scale, other_group)) == pytest.approx(np.log(2), abs=1e-5)
    memory = Memory(16, 16)
    memory.push(other, other, group + 100)
    assert info_nce(x, x, group, scale, memory) > info_nce(x, x, group, scale)


def test_memory_keeps_the_newest_rows(rng):
    memory = Memory(5, 4)
    for step in range(3):
        memory.push(torch.full((3, 4), float(step)), torch.zeros(3, 4), torch.full((3,), step))
    assert memory.group.tolist() == [2, 2, 2, 1, 1]


def test_class_blocks_are_a_permutation_of_same_class_runs():
    labels = np.repeat(np.arange(5), [9, 4, 13, 1, 7])
    order = class_block_order(labels, 4, np.random.default_rng(0))
    assert sorted(order) == list(range(len(labels)))
    # Walk the order block by block (a class's last block may be short): each block is one class.
    pos, blocks = 0, 0
    while pos < len(order):
        cls = labels[order[pos]]
        run = 1
        while pos + run < len(order) and run < 4 and labels[order[pos + run]] == cls:
            run += 1
        assert (labels[order[pos:pos + run]] == cls).all()
        pos, blocks = pos + run, blocks + 1
    assert blocks <= sum(-(-c // 4) for c in (9, 4, 13, 1, 7)) + 5  # blocks of one class may sit side by side
    assert sorted(class_block_order(labels, 1, np.random.default_rng(0))) == list(range(len(labels)))


def test_fingerprint_ignores_the_image_trunk_but_not_the_text_tower():
    def net() -> nn.Module:
        torch.manual_seed(0)
        m = nn.Module()
        m.towers = nn.ModuleDict({"image": nn.Linear(4, 4), "text": nn.Linear(4, 4)})
        m.fuse = nn.Linear(8, 4)
        return m

    base = space_fingerprint(net())
    m = net()
    with torch.no_grad():
        m.towers["image"].weight.add_(1.0)  # BatchNorm folding or int8 rewrite the image trunk only
    assert space_fingerprint(m) == base
    with torch.no_grad():
        m.towers["text"].weight.add_(1.0)
    assert space_fingerprint(m) != base


def photo(rgb: tuple[int, int, int], share: float) -> np.ndarray:
    """An 80x64 studio shot: white background, a block of one colour covering `share` of the rows."""
    img = np.full((80, 64, 3), 255, np.uint8)
    img[: round(80 * share), :32] = rgb
    return img


def test_colour_histogram_sees_the_product_not_the_background():
    shots = torch.from_numpy(np.stack([photo((200, 20, 20), 0.5), photo((200, 20, 20), 0.2),
                                       photo((20, 20, 120), 0.5), np.full((80, 64, 3), 255, np.uint8)]))
    h = colour_histogram(shots)
    assert h.shape == (4, 216) and h.dtype == torch.float32
    red = (200 * 6 // 256 * 6 + 20 * 6 // 256) * 6 + 20 * 6 // 256
    assert h[0, red] == pytest.approx(1.0) and h[1, red] == pytest.approx(1.0)  # the share of the product
    assert h[2, red] == 0 and h[2].max() == pytest.approx(1.0)  # navy lands elsewhere
    assert h[3].abs().sum() == 0  # all background: no colour at all
    assert torch.equal(colour_histogram(view(shots, "mirrored")), h)


def test_views_keep_the_photo_size_and_trunks_stack_per_view():
    shots = torch.from_numpy(np.stack([photo((200, 20, 20), 0.5), photo((20, 120, 20), 0.7)]))
    assert torch.equal(view(shots, "mirrored"), shots.flip(2))
    closer = view(shots, "closer")
    assert closer.shape == shots.shape and closer.dtype == torch.uint8 and not torch.equal(closer, shots)
    with pytest.raises(ValueError, match="unknown view"):
        view(shots, "sideways")
    towers = RetrievalTowers(tiny_fusion())
    out = trunks(towers, shots.numpy(), torch.device("cpu"), views=3)
    assert out.shape[:2] == (3, 2)
    torch.testing.assert_close(out[0], towers.trunk(shots))
    with pytest.raises(ValueError, match="train_retrieval.views"):
        trunks(towers, shots.numpy(), torch.device("cpu"), views=4)


def test_dropped_ids_become_padding_at_the_rate():
    ids = torch.arange(1, 10_001).reshape(100, 100)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(drop_ids(ids, 0.0, gen), ids)
    out = drop_ids(ids, 0.25, gen)
    kept = out.ne(0)
    assert torch.equal(out[kept], ids[kept])  # nothing but padding is written
    assert 0.22 < 1 - kept.float().mean() < 0.28


def test_two_learning_stages_cache_an_earlier_trunk_and_train_the_stage_before_the_last(tmp_path):
    fusion, a, before, towers, result = train_on_listings(epochs=6, patience=6, memory=0, views=2, colour=False,
                                                          stages=2, token_dropout=0.0)
    assert result["best_epoch"] > 0
    mine = towers.state_dict()
    for name, moved in (("layer2", False), ("layer3", True), ("layer4", True)):
        key = f"backbone.{name}.0.conv1.weight"
        assert torch.equal(mine[f"towers.image.tower.{key}"], before[f"towers.image.{key}"]) != moved, name
    shots = torch.from_numpy(a.images[:4])
    fresh = RetrievalTowers(fusion, colour=False, stages=2)
    assert fresh.trunk(shots).shape[1] == 8  # layer2's width in the tiny backbone: its output is the trunk
    assert fresh.towers["image"].trunk_key() is None  # never shared with the fusion network's trunk
    torch.testing.assert_close(fresh.eval().embed_image(shots), fresh.embed_image(None, fresh.trunk(shots)))
    save_towers(towers, tmp_path / "t.pt", {})
    back = load_towers(tmp_path / "t.pt")
    assert back.photo == {"colour": False, "stages": 2}
    with pytest.raises(ValueError, match="colour_histogram"):
        coloured = RetrievalTowers(fusion)
        coloured.embed_image(None, coloured.trunk(shots))
    np.testing.assert_allclose(back.embed_image(shots).detach().numpy(),
                               towers.eval().embed_image(shots).detach().numpy(), atol=1e-4)
