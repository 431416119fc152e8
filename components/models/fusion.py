"""The multi-modal model: towers -> L2-normalised shared space -> fused embedding -> shared classifier."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components.config import ModelArch
from components.models.towers import ImageTower, MetadataTower, TextTower, WideHead

MODALITIES = ("image", "text", "metadata")
CLASSIFIER_SCALE = 16.0


@dataclass(frozen=True)
class ModelConfig(ModelArch):
    """Everything needed to rebuild the network; saved in every checkpoint.

    The architecture fields come from params (`ModelArch`, one source); these add what the data decides.
    """

    modalities: tuple[str, ...]
    vocab_size: int
    subword_buckets: int
    attr_vocab_size: int
    cardinalities: tuple[int, ...]
    n_numeric: int
    n_classes: tuple[int, int, int]  # masterCategory, subCategory, articleType
    text_pretrained: str  # "" = HUSE text CNN; else the sentence-transformers model (frozen) for titles

    @classmethod
    def from_params(cls, arch: ModelArch, modalities: tuple[str, ...], **sizes: Any) -> ModelConfig:
        """`sizes`: the data-decided fields, as `Encoders.model_sizes()` gives them."""
        return cls(**{f.name: getattr(arch, f.name) for f in fields(ModelArch)}, modalities=modalities, **sizes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        tuples = ("modalities", "text_kernels", "cardinalities", "n_classes", "backbone_channels")
        # Checkpoints written before an option existed were built as its neutral value gives.
        d = {"text_pretrained": "", "stem_width": 0, **d}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


class FusionModel(nn.Module):
    """Single-modality baselines are the same class with one entry in `modalities`."""

    def __init__(self, cfg: ModelConfig, pretrained_path: str = "") -> None:
        super().__init__()
        unknown = set(cfg.modalities) - set(MODALITIES)
        if unknown or not cfg.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {cfg.modalities}")
        self.cfg = cfg
        d = cfg.embed_dim
        towers: dict[str, nn.Module] = {}
        if "image" in cfg.modalities:
            towers["image"] = ImageTower(cfg.backbone, d, cfg.dropout, pretrained_path, cfg.low_res_stem,
                                           cfg.backbone_channels, cfg.stem_width)
        if "text" in cfg.modalities and cfg.text_pretrained:
            from components.models.pretrained_text import PretrainedTextTower

            towers["text"] = PretrainedTextTower(cfg.text_pretrained, d, cfg.dropout)
        elif "text" in cfg.modalities:
            towers["text"] = TextTower(cfg.vocab_size, cfg.text_dim, cfg.text_channels, cfg.text_kernels,
                                       d, cfg.dropout, cfg.subword_buckets)
        if "metadata" in cfg.modalities:
            towers["metadata"] = MetadataTower(list(cfg.cardinalities), cfg.n_numeric, cfg.attr_vocab_size,
                                               cfg.meta_dim, d, cfg.dropout)
        self.towers = nn.ModuleDict(towers)
        m = len(cfg.modalities)
        # Fusion sees each modality's embedding zeroed when absent, plus the presence flags.
        self.fuse = nn.Sequential(nn.Linear(m * d + m, d * 2), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(d * 2, d))
        # One classifier per level, shared by every modality embedding and the fused one (HUSE).
        self.heads = nn.ModuleList(nn.Linear(d, n) for n in cfg.n_classes)
        self.wide = None
        if cfg.wide and ({"text", "metadata"} & set(cfg.modalities)):
            self.wide = WideHead(cfg.subword_buckets, cfg.attr_vocab_size, list(cfg.cardinalities),
                                 sum(cfg.n_classes), "text" in cfg.modalities, "metadata" in cfg.modalities)
        # Learnable temperature of the image-text contrastive loss; log(1/0.07) as in CLIP.
        self.logit_scale = nn.Parameter(torch.tensor(2.659))

    def embed_modalities(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L2-normalised (B, D) embedding per active modality."""
        out = {}
        if "image" in self.towers:
            out["image"] = self.towers["image"](batch["image"], batch.get("image_trunk"))
        if "text" in self.towers:
            out["text"] = self.towers["text"](batch["tokens"], batch["subwords"])
        if "metadata" in self.towers:
            out["metadata"] = self.towers["metadata"](batch["cat"], batch["num"], batch["attrs"])
        return {k: F.normalize(v.float(), dim=-1) for k, v in out.items()}

    def presence(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B,) bool per modality: image needs a decoded image, text a non-empty title."""
        b = batch["tokens"].shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=batch["tokens"].device)
        pres = {"image": batch["has_image"].bool(), "text": batch["tokens"].ne(0).any(1), "metadata": ones}
        if "present" in batch:  # callers (modality dropout, ablations) may switch modalities off
            for i, name in enumerate(MODALITIES):
                pres[name] = pres[name] & batch["present"][:, i]
        return {k: pres[k] for k in self.cfg.modalities}

    def forward_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embs = self.embed_modalities(batch)
        pres = self.presence(batch)
        parts, flags = [], []
        for name in self.cfg.modalities:
            p = pres[name].unsqueeze(1).to(embs[name].dtype)
            parts.append(embs[name] * p)
            flags.append(p)
        fused = F.normalize(self.fuse(torch.cat(parts + flags, dim=1)), dim=-1)  # (B, D)
        feats = {**embs, "fused": fused, **{f"present_{k}": v for k, v in pres.items()}}
        if self.wide is not None:
            groups = self.wide(batch["subwords"], batch["cat"], batch["attrs"])
            # An absent modality contributes no wide evidence either (dropout, ablations, empty titles).
            feats["wide"] = sum(g * pres[k].unsqueeze(1).to(g.dtype) for k, g in groups.items())
        return feats

    def classify(self, emb: torch.Tensor) -> list[torch.Tensor]:
        # Unit-norm inputs bound the logits; a fixed scale lets softmax reach confident values
        # without waiting for weight norms to grow against weight decay.
        return [head(emb * CLASSIFIER_SCALE) for head in self.heads]

    def fused_logits(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The model's prediction: the shared classifier on the fused embedding plus the wide head."""
        logits = self.classify(feats["fused"])
        if "wide" not in feats:
            return logits
        wide = feats["wide"].float().split(list(self.cfg.n_classes), dim=1)
        return [lg + w for lg, w in zip(logits, wide)]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {"fused": self.fused_logits(self.forward_features(batch))}


def build_model(cfg: ModelConfig, pretrained_path: str = "") -> FusionModel:
    return FusionModel(cfg, pretrained_path)
