"""Image decoding shared by ingest, predict and serving: one preprocessing path, no skew."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Catalog shots sit on white; padding with white keeps the product's look when the aspect differs.
PAD_VALUE = 255


@dataclass
class ImageBatch:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    status: list[str]  # "ok", "no_image" or "corrupt_image: why"


class ImageError(ValueError):
    """An image file cannot be decoded (corrupt, truncated, not an image)."""


def decode_image(data: bytes, height: int, width: int) -> np.ndarray:
    """Decode JPEG/PNG bytes to an (height, width, 3) uint8 array, aspect kept, padded with white."""
    if not data:
        raise ImageError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode: truncated files raise here, not later in training
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    w, h = img.size
    if w < 4 or h < 4:
        raise ImageError(f"image too small ({w}x{h})")
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = np.asarray(img, dtype=np.uint8)
    return out


def dhash(pixels: np.ndarray) -> int:
    """64-bit difference hash of an (H, W, 3) uint8 image: equal for re-encoded/resized copies."""
    gray = Image.fromarray(pixels).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    arr = np.asarray(gray, dtype=np.int16)
    bits = (arr[:, 1:] > arr[:, :-1]).flatten()  # (64,)
    return int(np.packbits(bits).view(">u8")[0])


def content_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
