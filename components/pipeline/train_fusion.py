"""Stage train_fusion: features (+ the image baseline's tower) -> artifacts/train_fusion/model/model.pt.

Image + title + metadata towers in one L2-normalised space, heads for all three levels, trained with
the fused/modality cross-entropy, HUSE semantic and gap terms and a CLIP-style contrastive term.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from components.atomic_io import atomic_dir, write_json
from components.checkpoint import fusion_checkpoint, read_blob
from components.config import Params, TrainFusionParams, load_params
from components.data import load_arrays, split_arrays, training_split
from components.encoders import load_encoders
from components.models.fusion import MODALITIES
from components.training.neural import train_neural

log = logging.getLogger(__name__)

FINETUNE = ("all", "last_stage", "none")


class FusionSetupError(ValueError):
    """params.train_fusion asks for something the inputs cannot give."""


def timings_file(params: Params) -> Path:
    """Run-to-run figures (wall time, throughput, memory): beside the DVC outputs, never one of them."""
    return Path(params.paths.train_fusion) / "timings.json"


def image_tower_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained image tower of the image-only baseline, keyed for the fusion model."""
    return {k: v for k, v in read_blob(checkpoint)["state_dict"].items() if k.startswith("towers.image.")}


def initial_image_state(tf: TrainFusionParams, baseline_dir: Path) -> dict[str, torch.Tensor] | None:
    if tf.finetune_image not in FINETUNE:
        raise FusionSetupError(f"train_fusion.finetune_image: {tf.finetune_image!r} is not one of {FINETUNE}")
    if tf.finetune_image != "all" and not tf.init_image_from_baseline:
        raise FusionSetupError("train_fusion.finetune_image: a frozen backbone must come trained; set "
                               "init_image_from_baseline: true or finetune_image: all")
    if not tf.init_image_from_baseline:
        return None
    ckpt = baseline_dir / "image" / "model.pt"
    if not ckpt.is_file():
        raise FusionSetupError(f"train_fusion: {ckpt} not found; run `dvc repro train_baseline@image` "
                               "or set train_fusion.init_image_from_baseline: false")
    return image_tower_state(ckpt)


def run(params: Params) -> dict:
    tf = params.train_fusion
    init = initial_image_state(tf, Path(params.paths.train_baseline))
    enc = load_encoders(params.paths.features)
    arrays, split = load_arrays(params.paths.ingest, params.paths.features)
    split = training_split(split, params.paths.ingest, params.paths.audit)
    ckpt = fusion_checkpoint(params.paths.train_fusion)
    with atomic_dir(ckpt.parent) as tmp:
        metrics, timings = train_neural(params.model, params.seed, enc, split_arrays(arrays, split), MODALITIES,
                                        tf.train, tmp, init, finetune_image=tf.finetune_image)
    write_json(Path(params.paths.train_fusion) / "metrics.json", metrics)
    write_json(timings_file(params), timings)
    return metrics


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(load_params())
    except FusionSetupError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
