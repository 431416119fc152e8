"""The retrieval adapter: identity at the start, the InfoNCE with memory, same-class batches, training that finds
a listing's other half, the self-describing file and the fingerprint of the space it reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.config import TrainRetrievalParams
from components.metrics import relevance
from components.models.retrieval import (
    AdapterConfig,
    AdapterError,
    Memory,
    RetrievalAdapter,
    class_block_order,
    info_nce,
    load_adapter,
    save_adapter,
    space_fingerprint,
)
from components.pipeline.train_retrieval import train_adapter


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_untrained_adapter_is_the_identity(rng):
    v = unit(rng.normal(size=(50, 16)))
    adapter = RetrievalAdapter(AdapterConfig(16, 32, 0.1))
    for m in ("image", "text"):
        np.testing.assert_allclose(adapter.transform(m, v), v, atol=1e-6)


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


def paired(rng: np.random.Generator, n: int, a: np.ndarray, b: np.ndarray, centres: np.ndarray):
    """Photo and title vectors of n listings: a listing is its class centre plus its own detail, seen through a
    different linear map per modality (so the raw spaces only agree on the class, not on the listing)."""
    cls = rng.integers(0, len(centres), n)
    latent = centres[cls] + 0.6 * rng.normal(size=(n, centres.shape[1]))
    image = unit(latent @ a + 0.05 * rng.normal(size=(n, a.shape[1])))
    text = unit(latent @ b + 0.05 * rng.normal(size=(n, b.shape[1])))
    return image, text, cls


def test_training_finds_each_listings_other_half_and_never_keeps_a_worse_epoch(rng):
    d = 16
    a = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    b = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    centres = 2.0 * rng.normal(size=(6, d))
    img, txt, cls = paired(rng, 800, a, b, centres)
    v_img, v_txt, v_cls = paired(rng, 200, a, b, centres)
    val = (v_img, v_txt, relevance(np.arange(200).astype(str), np.full(200, "")))
    p = TrainRetrievalParams(hidden=64, dropout=0.0, epochs=30, batch_size=64, lr=3e-3, weight_decay=0.0,
                             patience=30, memory=256, class_block=8, device="cpu")
    adapter, result = train_adapter(img, txt, np.arange(800), cls, val, p, seed=0, fingerprint="f" * 16)
    before, after = result["val"]["fusion_space"], result["val"]["adapter"]
    assert after["score"] >= max(h["score"] for h in result["history"])  # the best epoch is the one kept
    assert after["score"] > before["score"] + 0.1, (before, after)
    assert adapter.fingerprint == "f" * 16


def test_adapter_file_round_trip_and_refusals(tmp_path, rng):
    adapter = RetrievalAdapter(AdapterConfig(8, 16, 0.0), "abc")
    with torch.no_grad():
        adapter.maps["text"].mlp[-1].weight.normal_()
    path = tmp_path / "adapter.pt"
    save_adapter(adapter, path, {"best_epoch": 3})
    back = load_adapter(path)
    v = unit(rng.normal(size=(5, 8)))
    np.testing.assert_allclose(back.transform("text", v), adapter.transform("text", v), atol=1e-6)
    assert back.fingerprint == "abc" and back.key() == adapter.key()
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(AdapterError, match="junk.pt"):
        load_adapter(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(AdapterError, match="other.pt.*train_retrieval"):
        load_adapter(tmp_path / "other.pt")


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
