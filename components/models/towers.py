"""The three towers. Each maps its part of a batch to (B, out_dim); the only module that touches timm."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class ImageTower(nn.Module):
    """timm backbone (num_classes=0) + projection. Owns its preprocessing (uint8 HWC in)."""

    def __init__(self, backbone: str, out_dim: int, dropout: float, pretrained_path: str = "") -> None:
        super().__init__()
        import timm

        kwargs = {}
        if pretrained_path:
            if not Path(pretrained_path).is_file():
                raise FileNotFoundError(f"model.pretrained_path: {pretrained_path} does not exist; "
                                        "set it to a local .safetensors/.pth file or to \"\"")
            # Weights come from a local file only: nothing is downloaded at run time.
            kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained_path)}}
        self.backbone = timm.create_model(backbone, num_classes=0, **kwargs)
        cfg = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        # Models with a conv head (MobileNetV3, EfficientNet...) emit head_hidden_size, not num_features.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_dim))
        self.out_dim = out_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(self.preprocess(images)))  # (B, out_dim)


class TextTower(nn.Module):
    """HUSE-style text CNN (token embeddings, parallel 1-D convolutions, masked max-pool) plus a bag of
    hashed character trigrams, which carries rare and misspelt words the vocabulary maps to <unk>."""

    def __init__(self, vocab_size: int, emb_dim: int, channels: int, kernels: tuple[int, ...],
                 out_dim: int, dropout: float, subword_buckets: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, channels, k, padding=k // 2) for k in kernels)
        self.subwords = nn.EmbeddingBag(subword_buckets, emb_dim, mode="mean", padding_idx=0)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * len(kernels) + emb_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, tokens: torch.Tensor, subwords: torch.Tensor) -> torch.Tensor:
        mask = tokens.ne(0)  # (B, L)
        x = self.embed(tokens).transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in self.convs:
            h = F.relu(conv(x))[..., : tokens.shape[1]]  # (B, C, L); even kernels add one position
            h = h.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2)
            pooled.append(torch.nan_to_num(h, neginf=0.0))  # empty titles pool to zeros
        pooled.append(self.subwords(subwords))  # (B, E); all-padding rows give zeros
        return self.proj(torch.cat(pooled, dim=1))


class MetadataTower(nn.Module):
    """Categorical embeddings + numeric features + bag of attribute tokens -> MLP."""

    def __init__(self, cardinalities: list[int], n_numeric: int, attr_vocab: int, emb_dim: int,
                 out_dim: int, dropout: float) -> None:
        super().__init__()
        self.cats = nn.ModuleList(nn.Embedding(c, emb_dim) for c in cardinalities)
        self.attrs = nn.EmbeddingBag(attr_vocab, emb_dim, mode="mean", padding_idx=0)
        width = emb_dim * (len(cardinalities) + 1) + n_numeric
        self.mlp = nn.Sequential(nn.Linear(width, out_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(out_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, cat: torch.Tensor, num: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.cats)]
        parts.append(self.attrs(attrs))
        parts.append(num)
        return self.mlp(torch.cat(parts, dim=1))
