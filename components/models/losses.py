"""Training losses, all inside the autograd graph and weighted by params (train_*.train.losses)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import LossWeights


def level_ce(logits: list[torch.Tensor], labels: torch.Tensor, level_weights: tuple[float, ...],
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy over the category levels; `mask` selects rows (B,) bool."""
    total = logits[0].new_zeros(())
    for lvl, (lg, w) in enumerate(zip(logits, level_weights)):
        y = labels[:, lvl]
        valid = y.ge(0) if mask is None else y.ge(0) & mask
        if valid.any():
            total = total + w * F.cross_entropy(lg[valid].float(), y[valid])
    return total


def hierarchy_similarity(labels: torch.Tensor) -> torch.Tensor:
    """(B, B) target similarity from the label hierarchy: the share of levels two products share (3 levels:
    1 same finest class, 2/3 same parent, 1/3 same top level only)."""
    depth = labels.shape[1]
    total = labels[:, 0:1].eq(labels[:, 0].unsqueeze(0)).float()
    for i in range(1, depth):
        total = total + labels[:, i : i + 1].eq(labels[:, i].unsqueeze(0)).float()
    return total / float(depth)


def semantic_loss(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HUSE semantic-similarity term: embedding cosine similarities follow the label-hierarchy ones."""
    if emb.shape[0] < 2:
        return emb.new_zeros(())
    sim = emb @ emb.t()  # (B, B), unit vectors
    target = hierarchy_similarity(labels)
    off_diag = ~torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    return F.mse_loss(sim[off_diag], target[off_diag])


def gap_loss(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """HUSE cross-modal gap: a product's image and text embeddings should coincide."""
    if img.shape[0] == 0:
        return img.new_zeros(())
    return (img - txt).pow(2).sum(1).mean()


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, groups: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; rows of the same product group are all positives (repeated listings)."""
    if img.shape[0] < 2:
        return img.new_zeros(())
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * img @ txt.t()  # (B, B)
    pos = groups.unsqueeze(0).eq(groups.unsqueeze(1)).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))  # pos is symmetric


def total_loss(model, feats: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], w: LossWeights,
               level_weights: tuple[float, ...]) -> tuple[torch.Tensor, dict[str, float]]:
    """Combine every term; returns the loss and its parts for logging."""
    y = batch["labels"]
    parts = {"fused_ce": level_ce(model.fused_logits(feats), y, level_weights)}
    if w.modality_ce:
        mod = [level_ce(model.classify(feats[m]), y, level_weights, feats[f"present_{m}"])
               for m in model.cfg.modalities]
        parts["modality_ce"] = torch.stack(mod).mean()
    if w.semantic:
        parts["semantic"] = semantic_loss(feats["fused"], y)
    both = None
    if "image" in feats and "text" in feats:
        both = feats["present_image"] & feats["present_text"]
    if w.gap and both is not None:
        parts["gap"] = gap_loss(feats["image"][both], feats["text"][both])
    if w.contrastive and both is not None:
        parts["contrastive"] = contrastive_loss(feats["image"][both], feats["text"][both],
                                                batch["group"][both], model.logit_scale)
    loss = sum(getattr(w, k) * v for k, v in parts.items())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
