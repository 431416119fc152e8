"""Self-describing checkpoints: model config, encoders (label maps, vocabularies) and weights in one file."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from components.encoders import Encoders
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


def read_blob(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, loaded without unpickling code (tensors, numbers, strings, lists, dicts)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro` or pass --model") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds objects other than tensors and plain values; refused, because "
                              "loading it would run code from the file. Retrain it with this release") from exc
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, zip errors... for a bad file
        raise CheckpointError(f"{path}: not a readable DeepFusion checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); retrain it or restore the file") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[FusionModel, Encoders, dict[str, Any]]:
    """Rebuild the model through the same factory, with random init (weights come from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro` or pass --model")
    blob = read_blob(path, device)
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
