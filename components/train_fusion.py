"""Stage train_fusion: features (+ the image baseline's tower) -> artifacts/train_fusion/model.pt.

Image + title + metadata towers in one L2-normalised space, heads for all three levels, trained with
the fused/modality cross-entropy, HUSE semantic and gap terms and a CLIP-style contrastive term.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from components import tracking
from components.artifacts import atomic_dir, write_json
from components.config import Params, load_params
from components.data import load_arrays, split_arrays
from components.features import load_encoders
from components.neural_stage import train_neural

log = logging.getLogger(__name__)

MODALITIES = ("image", "text", "metadata")
FINETUNE = ("all", "last_stage", "none")


def image_tower_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained image tower of the image-only baseline, keyed for the fusion model."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {k: v for k, v in blob["state_dict"].items() if k.startswith("towers.image.")}


def run(params: Params) -> dict:
    enc = load_encoders(params.paths.features)
    df = pd.read_parquet(Path(params.paths.ingest) / "products.parquet")
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    splits = split_arrays(arrays, split)
    init, tf = None, params.train_fusion
    if tf.finetune_image not in FINETUNE:
        raise SystemExit(f"train_fusion.finetune_image: {tf.finetune_image!r} is not one of {FINETUNE}")
    if tf.finetune_image != "all" and not tf.init_image_from_baseline:
        raise SystemExit("train_fusion.finetune_image: a frozen backbone must come trained; set "
                         "init_image_from_baseline: true or finetune_image: all")
    if tf.init_image_from_baseline:
        ckpt = Path(params.paths.train_baseline) / "image" / "model.pt"
        if not ckpt.is_file():
            raise SystemExit(f"train_fusion: {ckpt} not found; run `dvc repro train_baseline@image` "
                             "or set train_fusion.init_image_from_baseline: false")
        init = image_tower_state(ckpt)
    example = tracking.example_frame(df[df.split == "val"], Path(params.paths.raw))
    out = Path(params.paths.train_fusion)
    with atomic_dir(out / "model") as tmp:
        metrics = train_neural(params, enc, splits, MODALITIES, tf.train, tmp, "train_fusion", example, init,
                               finetune_image=tf.finetune_image)
    write_json(out / "metrics.json", metrics)
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(load_params())


if __name__ == "__main__":
    main()
