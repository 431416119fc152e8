"""A neural training stage is a function of its inputs and seed: the same run twice gives the same weights."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from components import features, ingest, train_baseline, validate


def _weights(params, which: str) -> dict[str, torch.Tensor]:
    train_baseline.run(params, which)
    blob = torch.load(Path(params.paths.train_baseline) / which / "model.pt", map_location="cpu",
                      weights_only=False)
    return blob["state_dict"]


def test_same_seed_same_weights_other_seed_other_weights(tiny_params):
    ingest.run(tiny_params)
    validate.run(tiny_params)
    features.run(tiny_params)
    first = _weights(tiny_params, "metadata")
    torch.rand(1000)  # whatever ran before a stage (here: the first training) must not leak into the next
    again = _weights(tiny_params, "metadata")
    other = _weights(dataclasses.replace(tiny_params, seed=tiny_params.seed + 1), "metadata")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
