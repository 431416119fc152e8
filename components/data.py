"""In-memory batches from the feature arrays and the uint8 image cache (no JPEG decoding per step)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

BATCH_KEYS = ("tokens", "subwords", "attrs", "cat", "num", "labels", "has_image", "group")


@dataclass
class Arrays:
    """Row-aligned model inputs: the output of features.encode_frame plus images and labels."""

    tokens: np.ndarray
    subwords: np.ndarray
    attrs: np.ndarray
    cat: np.ndarray
    num: np.ndarray
    images: np.ndarray  # (N, H, W, 3) uint8
    has_image: np.ndarray
    labels: np.ndarray  # (N, 3), -1 = unknown
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, idx: np.ndarray) -> Arrays:
        # Materialise the split once: fancy indexing a memmap per batch would hit the disk each step.
        return Arrays(**{k: np.ascontiguousarray(getattr(self, k)[idx]) for k in self.__dataclass_fields__})


def to_batch(a: Arrays, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    batch = {k: torch.from_numpy(np.ascontiguousarray(getattr(a, k)[idx])) for k in BATCH_KEYS}
    batch["image"] = torch.from_numpy(np.ascontiguousarray(a.images[idx]))
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def iterate(a: Arrays, batch_size: int, device: torch.device, shuffle: bool = False,
            rng: np.random.Generator | None = None, max_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    order = rng.permutation(len(a)) if shuffle and rng is not None else np.arange(len(a))
    for b, start in enumerate(range(0, len(a), batch_size)):
        if max_batches and b >= max_batches:
            return
        yield to_batch(a, order[start : start + batch_size], device)


def augment_images(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Cheap batch augmentation on uint8 (B, H, W, 3): horizontal flip and a small shift."""
    b = images.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    images = images.clone()
    images[flip] = images[flip].flip(2)
    dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    # Shift with white fill (catalog backgrounds are white).
    shifted = torch.full_like(images, 255)
    h, w = images.shape[1:3]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    shifted[:, yd, xd] = images[:, ys, xs]
    return shifted


def load_arrays(ingest_dir: str, features_dir: str) -> tuple[Arrays, np.ndarray]:
    """All rows as Arrays (images memory-mapped) and the split code per row (0 train, 1 val, 2 test)."""
    from pathlib import Path

    f = np.load(Path(features_dir) / "features.npz")
    images = np.load(Path(ingest_dir) / "images.npy", mmap_mode="r")
    arrays = Arrays(tokens=f["tokens"], subwords=f["subwords"], attrs=f["attrs"], cat=f["cat"], num=f["num"],
                    images=images, has_image=f["has_image"], labels=f["labels"], group=f["group"])
    return arrays, f["split"]


def split_arrays(arrays: Arrays, split: np.ndarray) -> dict[str, Arrays]:
    return {name: arrays.subset(np.flatnonzero(split == code))
            for code, name in enumerate(("train", "val", "test"))}
