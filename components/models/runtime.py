"""Running a model: device choice, mixed precision and batched prediction (shared by training and serving)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from components.data import Arrays, iterate
from components.models.fusion import FusionModel

PREDICT_BATCH = 256  # rows per forward pass at inference; memory, not accuracy, sets it


def select_device(preference: str) -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(preference)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA; fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict_arrays(model: FusionModel, a: Arrays, batch_size: int, device: torch.device,
                   present: tuple[bool, bool, bool] | None = None, embeddings: bool = False) -> dict:
    """Fused class probabilities per level (and optionally embeddings) for every row of `a`."""
    model.eval()
    probs: list[list[np.ndarray]] = [[], [], []]
    embs: dict[str, list[np.ndarray]] = {}
    for batch in iterate(a, batch_size, device):
        if present is not None:
            batch["present"] = torch.tensor(present, device=device).expand(len(batch["tokens"]), 3)
        with autocast(device):
            feats = model.forward_features(batch)
        for lvl, lg in enumerate(model.fused_logits({**feats, "fused": feats["fused"].float()})):
            probs[lvl].append(torch.softmax(lg.float(), 1).cpu().numpy())
        if embeddings:
            for k in (*model.cfg.modalities, "fused"):
                embs.setdefault(k, []).append(feats[k].float().cpu().numpy())
    out = {"probs": [np.concatenate(p) if p else np.zeros((0, 0)) for p in probs]}
    if embeddings:
        out["embeddings"] = {k: np.concatenate(v) for k, v in embs.items()}
    return out
