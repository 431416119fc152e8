"""Self-describing checkpoints: model config, encoders (label maps, vocabularies) and weights in one file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from components.features import Encoders
from components.models.fusion import FusionModel, ModelConfig, build_model

# /2: word + character n-grams in `subwords`, the wide head and the low-res stem option.
FORMAT = "deepfusion-checkpoint/2"


def fusion_checkpoint(train_fusion_dir: str | Path) -> Path:
    """Where the train_fusion stage writes its model (params.paths.train_fusion)."""
    return Path(train_fusion_dir) / "model" / "model.pt"


class CheckpointError(ValueError):
    """The file is not a DeepFusion checkpoint or is from an incompatible format."""


def save_checkpoint(path: str | Path, model: FusionModel, encoders: Encoders, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "model_config": model.cfg.to_dict(), "encoders": encoders.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[FusionModel, Encoders, dict[str, Any]]:
    """Rebuild the model through the same factory, with random init (weights come from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro` or pass --model")
    blob = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        hint = ""
        if isinstance(found, str) and found.startswith("deepfusion-checkpoint/"):
            hint = ("; it was written by an older DeepFusion release: retrain (`dvc repro train_fusion`) and "
                    "register the new model, or load it with the release that wrote it")
        raise CheckpointError(f"{path}: not a {FORMAT} file (found {found!r}){hint}")
    model = build_model(ModelConfig.from_dict(blob["model_config"]), pretrained_path="")
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return model, Encoders.from_dict(blob["encoders"]), blob["meta"]
