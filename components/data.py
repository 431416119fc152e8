"""In-memory batches from the feature arrays and the uint8 image cache (no JPEG decoding per step)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.images import ImageBatch

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # the `split` column of features.npz
EXCLUDED_CODE = -1  # train rows left out of training (audit.exclude_from_training): in no split
EXCLUDE_FILE = "exclude.csv"  # written by the audit stage: ids the training stages leave out
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


def augment_images(images: torch.Tensor, gen: torch.Generator, scale_jitter: float = 0.0,
                   erase_prob: float = 0.0) -> torch.Tensor:
    """Batch augmentation on uint8 (B, H, W, 3), drawn per product from `gen`.

    Always: horizontal flip and a shift of up to 3 px. `scale_jitter` s zooms each product by a factor in
    [1 - s, 1 + s]; `erase_prob` blanks one box of up to half the height and half the width. Fill is
    white, as the catalog's backgrounds. The fusion stage uses the strong options: its image tower was
    trained on the same products (93 % train vs 82 % validation accuracy), so unaugmented training shots
    teach the fused classifier to trust the image more than it deserves on new products.
    """
    b, h, w, _ = images.shape
    if b == 0:
        return images
    flip = torch.rand(b, generator=gen) < 0.5
    zoom = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * scale_jitter
    shift = torch.randint(-3, 4, (b, 2), generator=gen).float()
    # affine_grid maps output to input coordinates in [-1, 1]: a zoom z samples a 1/z-sized window.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = -shift[:, 1] * 2 / w
    theta[:, 1, 2] = -shift[:, 0] * 2 / h
    # grid_sample pads with zeros: sample the inverted image so that the padding comes out white.
    inv = 255.0 - images.permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.affine_grid(theta, [b, 3, h, w], align_corners=False)
    out = 255.0 - torch.nn.functional.grid_sample(inv, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)
    if erase_prob > 0:
        erase = torch.rand(b, generator=gen) < erase_prob
        eh = (torch.rand(b, generator=gen) * 0.5 * h).long() + 1  # up to half the height and half the width
        ew = (torch.rand(b, generator=gen) * 0.5 * w).long() + 1
        y0 = (torch.rand(b, generator=gen) * (h - eh + 1)).long()
        x0 = (torch.rand(b, generator=gen) * (w - ew + 1)).long()
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        box = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
               & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)) & erase.view(b, 1, 1))
        out = out.masked_fill(box.unsqueeze(1), 255.0)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def load_arrays(ingest_dir: str, features_dir: str) -> tuple[Arrays, np.ndarray]:
    """All rows as Arrays (images memory-mapped) and the split code per row (SPLIT_CODES)."""
    f = np.load(Path(features_dir) / "features.npz")
    images = np.load(Path(ingest_dir) / "images.npy", mmap_mode="r")
    arrays = Arrays(tokens=f["tokens"], subwords=f["subwords"], attrs=f["attrs"], cat=f["cat"], num=f["num"],
                    images=images, has_image=f["has_image"], labels=f["labels"], group=f["group"])
    return arrays, f["split"]


def excluded_ids(audit_dir: str | Path) -> np.ndarray:
    """Ids of the train products the audit leaves out of training (none when the option is off or the audit
    has not run, as in a pipeline driven stage by stage without it)."""
    path = Path(audit_dir) / EXCLUDE_FILE  # ids as text: numbers and SKUs alike
    return pd.read_csv(path, dtype={"id": str})["id"].to_numpy(str) if path.is_file() else np.zeros(0, str)


def training_split(split: np.ndarray, ingest_dir: str | Path, audit_dir: str | Path) -> np.ndarray:
    """The split codes with the audit's excluded train rows moved out of every split (val and test keep all
    their products: they are judged, never cleaned)."""
    drop = excluded_ids(audit_dir)
    if not len(drop):
        return split
    ids = pd.read_parquet(Path(ingest_dir) / "products.parquet", columns=["id"])["id"].astype(str).to_numpy()
    out = split.copy()
    out[(split == SPLIT_CODES["train"]) & np.isin(ids, drop)] = EXCLUDED_CODE
    return out


def split_arrays(arrays: Arrays, split: np.ndarray) -> dict[str, Arrays]:
    return {name: arrays.subset(np.flatnonzero(split == code)) for name, code in SPLIT_CODES.items()}


def cached_images(ingest_dir: str | Path, idx: np.ndarray, has_image: np.ndarray) -> ImageBatch:
    """Images of rows `idx` from ingest's uint8 cache (no JPEG decoding); `has_image` of those rows."""
    cache = np.load(Path(ingest_dir) / "images.npy", mmap_mode="r")
    return ImageBatch(np.ascontiguousarray(cache[idx]), ["ok" if h else "no_image" for h in has_image])


def cached_products(ingest_dir: str | Path, idx: np.ndarray) -> tuple[pd.DataFrame, ImageBatch]:
    """Rows `idx` of the curated table with their images from ingest's uint8 cache (no JPEG decoding)."""
    df = pd.read_parquet(Path(ingest_dir) / "products.parquet").iloc[idx].reset_index(drop=True)
    return df, cached_images(ingest_dir, idx, df["has_image"].to_numpy())
