"""The retrieval adapter: the fusion network's photo and title vectors mapped into a space where a listing's
photo finds its own title and back.

The fusion network's shared space is shaped mostly by class-level losses, which pull every product of a class
together: right for categorizing, wrong for telling one listing from its neighbours. The adapter is one residual
MLP per modality on those frozen vectors, trained by an instance-level InfoNCE (learned temperature, negatives
from a memory of recent batches and from same-class blocks in every batch). Its last layer starts at zero, so an
untrained adapter is the identity and search answers exactly as the fusion space does. Categorizing never reads
it: the served stack's predictions cannot change.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.atomic_io import atomic_write_bytes

FORMAT = "deepfusion-retrieval-adapter/1"
ADAPTER_FILE = "adapter.pt"
MODALITIES = ("image", "text")
# The parts of a fusion network that fix its shared space and that no serving form rewrites: BatchNorm folding
# and int8 touch the image trunk only, so a checkpoint, a stack and a registered model of one training run agree.
FINGERPRINT_PREFIXES = ("towers.text.", "fuse.", "heads.")


class AdapterError(ValueError):
    """The adapter file is unreadable, of another format, or was trained on another fusion network."""


def space_fingerprint(model: nn.Module) -> str:
    """Names the fusion network an adapter was trained on (16 hex characters)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not name.startswith(FINGERPRINT_PREFIXES) or not isinstance(value, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class AdapterConfig:
    dim: int  # the fusion network's embed_dim
    hidden: int
    dropout: float


class Residual(nn.Module):
    """v -> normalize(v + MLP(v)), the MLP's output layer zero at the start (the identity)."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v + self.mlp(v), dim=-1)


class RetrievalAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, fingerprint: str = "") -> None:
        super().__init__()
        self.cfg = cfg
        self.fingerprint = fingerprint  # the fusion network whose vectors it reads
        self.maps = nn.ModuleDict({m: Residual(cfg) for m in MODALITIES})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's starting temperature

    def forward(self, modality: str, v: torch.Tensor) -> torch.Tensor:
        return self.maps[modality](v)

    @torch.no_grad()
    def transform(self, modality: str, vectors: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Unit vectors of the adapted space for (N, dim) fusion-space vectors (float32)."""
        was = self.training
        self.eval()
        out = [self(modality, torch.from_numpy(np.ascontiguousarray(vectors[i:i + batch], np.float32))).numpy()
               for i in range(0, len(vectors), batch)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.cfg.dim), np.float32)

    def key(self) -> str:
        """Names the adapted space (the fusion network it reads plus its own weights): part of a search index's
        model key."""
        h = hashlib.sha256(self.fingerprint.encode())
        for name, value in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:8]


# --- the objective -----------------------------------------------------------------------------------------------


class Memory:
    """Cross-batch memory (XBM, Wang et al. 2020): the adapted vectors of the last `size` training rows, used as
    extra negatives. A small MLP drifts slowly, so stale vectors are still good negatives, and the effective batch
    grows from the batch to batch + memory at the cost of one matrix product."""

    def __init__(self, size: int, dim: int) -> None:
        self.size = size
        self.image = torch.zeros(0, dim)
        self.text = torch.zeros(0, dim)
        self.group = torch.zeros(0, dtype=torch.long)

    def push(self, image: torch.Tensor, text: torch.Tensor, group: torch.Tensor) -> None:
        if not self.size:
            return
        self.image = torch.cat([image.detach(), self.image])[: self.size]
        self.text = torch.cat([text.detach(), self.text])[: self.size]
        self.group = torch.cat([group, self.group])[: self.size]


def info_nce(image: torch.Tensor, text: torch.Tensor, group: torch.Tensor, logit_scale: torch.Tensor,
             memory: Memory | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (photo, title) pairs. Rows of one product group (repeated listings) are
    all positives; remembered rows are negatives, except those of the query's own group (neither positive nor
    negative: one may be this very listing, a few steps old)."""
    scale = logit_scale.exp().clamp(max=100.0)
    pos = group.unsqueeze(0).eq(group.unsqueeze(1)).float()
    target = pos / pos.sum(1, keepdim=True)
    keys_i, keys_t = image, text
    blocked = None
    if memory is not None and len(memory.group):
        keys_i, keys_t = torch.cat([image, memory.image]), torch.cat([text, memory.text])
        blocked = group.unsqueeze(1).eq(memory.group.unsqueeze(0))  # (B, M)
        target = torch.cat([target, target.new_zeros(blocked.shape)], dim=1)

    # Blocked rows get a finite floor, not -inf: their target weight is 0, and 0 * -inf would be NaN.
    def side(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        logits = scale * q @ keys.t()
        if blocked is not None:
            logits = torch.cat([logits[:, : len(q)], logits[:, len(q):].masked_fill(blocked, -1e9)], 1)
        return F.cross_entropy(logits, target)

    return 0.5 * (side(text, keys_i) + side(image, keys_t))


def class_block_order(labels: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """An epoch's row order in which every run of `block` rows comes from one class (the rest of a class's rows
    shuffled into blocks of their own): consecutive batches then hold same-class products, the hard negatives a
    shuffled batch of 100+ classes rarely has. block <= 1: a plain shuffle."""
    if block <= 1:
        return rng.permutation(len(labels))
    blocks = []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        blocks += [rows[i:i + block] for i in range(0, len(rows), block)]
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


# --- the file ----------------------------------------------------------------------------------------------------


def adapter_file(train_retrieval_dir: str | Path) -> Path:
    """Where the train_retrieval stage writes the adapter (params.paths.train_retrieval)."""
    return Path(train_retrieval_dir) / ADAPTER_FILE


def save_adapter(adapter: RetrievalAdapter, path: Path, metrics: dict) -> None:
    """A self-describing checkpoint: format, config, the fusion network it reads, weights, what it scored."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": asdict(adapter.cfg), "fingerprint": adapter.fingerprint,
                "state_dict": adapter.state_dict(), "metrics": metrics}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_adapter(path: str | Path) -> RetrievalAdapter:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # data only: no code runs on load
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the caller
        raise AdapterError(f"{path}: not a readable retrieval adapter ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a retrieval adapter of format {FORMAT}; rerun `dvc repro train_retrieval`")
    adapter = RetrievalAdapter(AdapterConfig(**blob["config"]), blob["fingerprint"])
    adapter.load_state_dict(blob["state_dict"])
    return adapter.eval()
